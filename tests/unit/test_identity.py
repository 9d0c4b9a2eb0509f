"""pipeline/identity.py: a step's code identity is computed from what it imports.

The first test checks the static analysis against the interpreter: what
importing a step's modules really loads must all be in the step's identity.
The others change a copy of the package and watch the digests.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import identity
from pipeline.build import package, steps

PROJECT = Path(__file__).resolve().parents[2]
PACKAGE = PROJECT / "pipeline"

# step -> (what implements it in the task graph, the module doing the work)
STEPS = {
    "bootstrap": (steps.do_bootstrap, "pipeline.build.bootstrap"),
    "kernel": (steps.do_kernel, "pipeline.build.kernel"),
    "rootfs": (steps.do_rootfs, "pipeline.build.rootfs"),
    "build": (steps.do_build, "pipeline.build.triple"),
    "package": (package, "pipeline.build.package"),
}

RUNTIME_IMPORTS = """\
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print("\\n".join(sorted(n for n in sys.modules if n == "pipeline" or n.startswith("pipeline."))))
"""


def imported_at_runtime(modules: set[str]) -> set[str]:
    """The pipeline modules a fresh interpreter has loaded after importing *modules*."""
    done = subprocess.run([sys.executable, "-c", RUNTIME_IMPORTS, *sorted(modules)],
                          cwd=PROJECT, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def entry(step: str) -> str:
    return identity.entry_of(STEPS[step][0])


def used_modules(step: str) -> set[str]:
    """The modules a step's implementation names (itself, for a module entry)."""
    name = entry(step)
    return identity.function_code(name)[0] if ":" in name else {name}


@pytest.fixture
def copy(tmp_path) -> Path:
    """A copy of the pipeline package to change."""
    root = tmp_path / "pipeline"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def touch(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


# -- (1) the identity misses no module the step imports ------------------------

@pytest.mark.parametrize("step", sorted(STEPS))
def test_identity_covers_every_module_the_step_imports(step):
    used = used_modules(step)
    assert STEPS[step][1] in used, f"{entry(step)} does not use {STEPS[step][1]}"
    covered = set(identity.code_files([entry(step)]))
    loaded = imported_at_runtime(used | {STEPS[step][1]})
    assert STEPS[step][1] in loaded
    missing = sorted(name for name in loaded
                     if identity.module_file(name).relative_to(PACKAGE).as_posix() not in covered)
    assert missing == [], f"the identity of {step} misses {missing}"


def test_build_identity_reaches_deep_modules():
    files = identity.code_files([entry("build")])
    # triple -> audit/fit -> cpio -> runner: none of them named by the step itself
    assert {"cpio.py", "runner.py", "ext4.py", "build/audit.py", "build/fit.py",
            "__init__.py", "build/__init__.py"} <= set(files)
    assert files == sorted(files)


# -- (2) a change deep in the closure re-runs the steps that use it ------------

def test_digest_is_the_same_for_an_identical_copy(copy):
    for step in STEPS:
        assert identity.digest([entry(step)], copy) == identity.digest([entry(step)])


def test_cpio_change_changes_build_not_bootstrap(copy):
    assert "cpio.py" not in identity.code_files([entry("bootstrap")], copy)
    before = {step: identity.digest([entry(step)], copy) for step in STEPS}
    touch(copy / "cpio.py", '"""', '""" ')
    after = {step: identity.digest([entry(step)], copy) for step in STEPS}
    assert after["build"] != before["build"]
    assert after["bootstrap"] == before["bootstrap"]
    assert after["package"] == before["package"]


def test_runner_change_changes_every_step(copy):
    before = {step: identity.digest([entry(step)], copy) for step in STEPS}
    touch(copy / "runner.py", '"""', '""" ')
    for step in STEPS:
        assert identity.digest([entry(step)], copy) != before[step], step


def test_one_action_change_changes_only_that_step(copy):
    before = {step: identity.digest([entry(step)], copy) for step in STEPS}
    touch(copy / "build/steps.py", "    made = triple.assemble(", "    made  = triple.assemble(")
    after = {step: identity.digest([entry(step)], copy) for step in STEPS}
    assert after["build"] != before["build"]
    assert {s: after[s] for s in STEPS if s != "build"} == \
           {s: before[s] for s in STEPS if s != "build"}


def test_helper_used_by_an_action_counts(copy):
    before = identity.digest([entry("kernel")], copy)
    touch(copy / "build/steps.py", '[:16] if path.exists() else "missing"',
          '[:17] if path.exists() else "missing"')
    assert identity.digest([entry("kernel")], copy) != before


# -- (3) data files ---------------------------------------------------------------

def test_data_file_changes_change_the_digest(copy):
    before = identity.digest([entry("build")], copy)
    script = copy / "build/data/units/first-boot.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text("#!/bin/sh\necho one\n")
    added = identity.digest([entry("build")], copy)
    assert added != before
    assert "build/data/units/first-boot.sh" in identity.code_files([entry("build")], copy)
    script.write_text("#!/bin/sh\necho two\n")
    assert identity.digest([entry("build")], copy) not in (before, added)


def test_data_of_a_package_outside_the_closure_does_not_count(copy):
    before = identity.digest([entry("build")], copy)
    (copy / "lab/data").mkdir(exist_ok=True)
    (copy / "lab/data/guest.sh").write_text("#!/bin/sh\n")
    assert identity.digest([entry("build")], copy) == before


# -- the analysis itself, on a made-up package --------------------------------------

def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_import_forms(tmp_path):
    root = tmp_path / "pipeline"
    write(root, {
        "__init__.py": "",
        "a.py": "import os\nfrom pipeline.sub import b\n",
        "sub/__init__.py": "from pipeline.sub.e import NAME\n",
        "sub/b.py": "from . import c\nfrom .c import thing\n\ndef late():\n    import pipeline.f\n",
        "sub/c.py": "thing = 1\n",
        "sub/d.py": "",
        "sub/e.py": "NAME = 'e'\n",
        "f.py": "",
        "g.py": "",
    })
    assert identity.closure(["pipeline.a"], root) == [
        "pipeline", "pipeline.a", "pipeline.f", "pipeline.sub", "pipeline.sub.b",
        "pipeline.sub.c", "pipeline.sub.e"]


def test_function_entry_uses_only_what_the_function_names(tmp_path):
    root = tmp_path / "pipeline"
    write(root, {
        "__init__.py": "", "x.py": "", "y.py": "", "z.py": "",
        "acts.py": ("from pipeline import x, y\nfrom pipeline.z import thing\n"
                    "LIMIT = 3\n\n"
                    "def helper():\n    return thing() + LIMIT\n\n"
                    "def one():\n    return x.run(helper())\n\n"
                    "def two():\n    return y.run()\n"),
    })
    modules, sources = identity.function_code("pipeline.acts:one", root)
    assert modules == {"pipeline", "pipeline.x", "pipeline.z"}
    assert len(sources) == 3          # one, helper, LIMIT
    assert identity.code_files(["pipeline.acts:two"], root) == ["__init__.py", "y.py"]


def test_unknown_entries_are_named(tmp_path):
    with pytest.raises(ValueError, match="no project module 'pipeline.nosuch'"):
        identity.digest(["pipeline.nosuch"])
    with pytest.raises(ValueError, match="no top-level definition 'do_nothing'"):
        identity.digest(["pipeline.build.steps:do_nothing"])
