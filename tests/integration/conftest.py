"""The integration tier: every test here is slow, and they share one build."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scratch_build import FLAVOUR, IMAGE, TASK, current_manifest, doit, make_scratch_project

TIER = Path(__file__).resolve().parent


def pytest_itemcollected(item):
    """Mark by folder, so that no file here can forget ``pytestmark``.

    This runs as each item is collected, before the root conftest's
    collection hook skips the slow items unless ``--slow`` is given.
    """
    if Path(item.path).resolve().is_relative_to(TIER):
        item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def built() -> Path:
    """Build the triple once; return its manifest."""
    make_scratch_project()
    proc = doit(TASK)
    assert re.search(rf"==> build {IMAGE}-{FLAVOUR}: (done in [0-9.]+s|start)", proc.stdout) \
        or "-- build" in proc.stdout, proc.stdout[-2000:]
    return current_manifest()
