"""The README's first two commands are the contract with a new user, and CI
must run exactly the second one."""

from __future__ import annotations

import re
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (PROJECT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "README has no sh block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_build_and_test_commands():
    build, test = readme_commands()[:2]
    assert build.startswith("./setup-host") and "doit build" in build
    assert test.startswith("./setup-host --test") and "pytest" in test


def test_ci_runs_the_readme_test_command():
    test = readme_commands()[1]
    ci = (PROJECT / ".ci" / "run").read_text().splitlines()
    assert test in [line.strip() for line in ci], (test, ci)


def test_readme_names_only_recipes_that_exist():
    text = (PROJECT / "README.md").read_text()
    for name in set(re.findall(r"doit build:([a-z0-9.+-]+?)(?:-amd64|-cloud-amd64)?\b", text)):
        assert (PROJECT / "recipes" / f"{name}.yaml").exists(), name
