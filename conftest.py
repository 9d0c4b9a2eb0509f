"""Test tiers: the fast tests by default; ``--slow`` adds the items marked
``slow``: everything under tests/integration/ (its conftest.py marks them by
folder: real builds and qemu boots) and the few slow tests marked one by one
(the .deb build in open-iscsi-boot/tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent
sys.path.insert(0, str(PROJECT))


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow (real builds, qemu boots, the .deb build)")


def pytest_collection_modifyitems(config, items):
    """Skip what is marked slow unless --slow is given (markers added while
    collecting, as tests/integration/conftest.py does, are already there)."""
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
