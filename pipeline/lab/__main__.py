"""``python3 -m pipeline.lab``: see pipeline/lab/harness.py."""

import sys

from pipeline.lab.harness import main

sys.exit(main())
