"""Test tiers: fast unit tests by default; ``--slow`` adds the integration
tests that build real triples (and, later, boot them)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent
sys.path.insert(0, str(PROJECT))


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the slow integration tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
