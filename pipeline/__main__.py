"""``python3 -m pipeline``: the command line is pipeline/cli.py."""
import sys

from pipeline.cli import main

sys.exit(main())
