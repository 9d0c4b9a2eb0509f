#!/usr/bin/env python3
"""Build benchmark: the pipeline against the bare tools, side by side in one run.

    python3 bench/build.py [--recipe recipes/trixie.yaml] [--with-mkosi] [--keep]

(a) floor: plain mmdebstrap of the recipe's packages plus the first flavour's
    kernel, then mkinitramfs and mkfs.ext4 -- no pipeline around them;
(b) cold ``doit build`` of the first flavour's triple in an empty project;
(c) no-op rebuild;
(d) rebuild after changing one overlay file;
(e) adding the recipe's second flavour;
(f) only with --with-mkosi (off by default: it adds a second cold build to
    the run and needs mkosi 24 or newer): cold ``doit build`` of
    recipes/trixie-mkosi.yaml's triple in an empty project of its own,
    against the same floor (a).  The mkosi recipe has the default recipe's
    packages, so (f) / (a) is what the third bootstrapper costs; it has no
    goal, the ratio is printed as is.

Prints each time and the ratios against the goals.  Work happens under
out/bench/ (removed first; kept afterwards with --keep).  Needs root.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

import yaml  # noqa: E402

from pipeline.build import bootstrappers, chroot  # noqa: E402
from pipeline import ext4, runner  # noqa: E402
from pipeline.fsutil import remove_tree  # noqa: E402
from pipeline.build.scratch import write_project  # noqa: E402
from pipeline.build.recipe import load_recipe  # noqa: E402

GOALS = {"cold / floor": 1.2, "overlay-only / cold": 0.15, "second flavour / cold": 0.40}
MKOSI_RECIPE = PROJECT / "recipes" / "trixie-mkosi.yaml"

def timed(label: str, func) -> float:
    print(f"--- {label}", flush=True)
    start = time.monotonic()
    func()
    seconds = time.monotonic() - start
    print(f"--- {label}: {seconds:.1f} s", flush=True)
    return seconds


def floor(recipe, work: Path) -> None:
    tree = work / "floor"
    flavour = recipe.kernel_flavours[0]
    env = {"SOURCE_DATE_EPOCH": str(recipe.source_date_epoch), "INITRD": "No"}
    runner.run(["mmdebstrap", "--mode=root", "--variant=apt",
                "--include=" + ",".join([*recipe.packages, f"linux-image-{flavour}"]),
                recipe.suite, str(tree), recipe.mirror], env=env)
    release = sorted(p.name for p in (tree / "usr/lib/modules").iterdir())[0]
    with chroot.mounted(tree):
        chroot.run(tree, ["mkinitramfs", "-o", "/boot/initrd.img-" + release, release], env=env)
    image = work / "floor.ext4"
    with open(image, "wb") as handle:
        handle.truncate(ext4.image_size(ext4.content_bytes(tree), 20, 128))
    runner.run(["mkfs.ext4", "-q", "-F", "-L", "floor", "-d", str(tree), str(image)])


def recipe_text(recipe_path: Path, flavours: list[str]) -> str:
    data = yaml.safe_load(recipe_path.read_text())
    data["kernel_flavours"] = flavours
    return yaml.safe_dump(data, sort_keys=False)


def make_project(recipe_path: Path, project: Path, flavours: list[str]) -> None:
    write_project(project, {recipe_path.name: recipe_text(recipe_path, flavours)},
                  overlays=PROJECT / "overlays", link_packages=True)


def doit(project: Path, *args: str) -> None:
    runner.run([sys.executable, "-m", "doit", *args], cwd=project)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=PROJECT / "recipes" / "trixie.yaml")
    parser.add_argument("--with-mkosi", action="store_true",
                        help=f"also (f): a cold build of {MKOSI_RECIPE.relative_to(PROJECT)}")
    parser.add_argument("--keep", action="store_true", help="keep out/bench/ afterwards")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, PROJECT / "overlays")
    if len(recipe.kernel_flavours) < 2:
        parser.error(f"{args.recipe}: needs two kernel flavours for (e)")
    if args.with_mkosi:
        # Before any work: found out only after (a)-(e), it would waste them.
        problem = bootstrappers.problem("mkosi")
        if problem:
            parser.error(f"--with-mkosi: {problem}")
        mkosi_flavour = load_recipe(MKOSI_RECIPE, PROJECT / "overlays").kernel_flavours[0]
    first, second = recipe.kernel_flavours[:2]
    work = PROJECT / "out" / "bench"
    remove_tree(work)
    work.mkdir(parents=True)
    project = work / "project"
    make_project(args.recipe, project, [first])

    times = {}
    times["floor"] = timed("(a) floor: mmdebstrap + mkinitramfs + mkfs", lambda: floor(recipe, work))
    times["cold"] = timed(f"(b) cold doit build ({first})", lambda: doit(project, "build"))
    times["no-op"] = timed("(c) no-op rebuild", lambda: doit(project, "build"))
    overlay_file = next(p for p in sorted((project / "overlays").rglob("*"))
                        if p.is_file() and not p.is_symlink())
    overlay_file.write_text(overlay_file.read_text() + "# benchmark change\n")
    times["overlay"] = timed(f"(d) rebuild after changing {overlay_file.relative_to(project)}",
                             lambda: doit(project, "build"))
    # Only the recipe changes: the overlay edit of (d) stays.
    (project / "recipes" / args.recipe.name).write_text(recipe_text(args.recipe, [first, second]))
    times["second"] = timed(f"(e) add second flavour ({second})", lambda: doit(project, "build"))
    if args.with_mkosi:
        mkosi_project = work / "project-mkosi"
        make_project(MKOSI_RECIPE, mkosi_project, [mkosi_flavour])
        times["mkosi cold"] = timed(f"(f) cold doit build of {MKOSI_RECIPE.stem} ({mkosi_flavour})",
                                    lambda: doit(mkosi_project, "build"))

    ratios = {"cold / floor": times["cold"] / times["floor"],
              "overlay-only / cold": times["overlay"] / times["cold"],
              "second flavour / cold": times["second"] / times["cold"]}
    if args.with_mkosi:
        ratios["mkosi cold / floor"] = times["mkosi cold"] / times["floor"]
    print("\nresults")
    for name, seconds in times.items():
        print(f"  {name:<10} {seconds:7.1f} s")
    print(f"  {'no-op':<10} goal <= 2 s: {'met' if times['no-op'] <= 2 else 'NOT met'}")
    for name, ratio in ratios.items():
        goal = GOALS.get(name)
        verdict = "no goal" if goal is None else \
            f"goal <= {goal:.2f}: {'met' if ratio <= goal else 'NOT met'}"
        print(f"  {name:<22} {ratio:5.2f}  {verdict}")
    if not args.keep:
        remove_tree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
