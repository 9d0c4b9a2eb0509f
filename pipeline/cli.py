"""The command line: ``python3 -m pipeline <command> ...``.

Checks of built triples (each takes one or more manifests, or any file of a
triple, and prints one line per problem; exit 1 if there was one):

    audit  MANIFEST...   no per-machine state or secret in the artifacts
    fit    MANIFEST...   kernel, initramfs modules and root modules of one release
    verify MANIFEST...   every part matches the manifest's size and sha256

The fleet, from the site inventory (default: <project>/inventory.yaml) and
the triples in <project>/out/triples (or --triples):

    publish        [--apply [--control-port N]]   boot files, disks and tgt configuration
    gc                                            remove published files no machine uses
    reprovision    NAME [--apply [--control-port N]]   a fresh disk; the old one kept as a backup
    remove-backup  NAME                           ...until this

The boot lab:

    lab MANIFEST [--down N] [--timeout S] [--keep DIR]   boot the triple in a namespace

The project is the current folder unless --project says otherwise.  A
problem the user can fix is one line on stderr and exit status 2, as is a
usage error.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Callable

from pipeline.build import audit, fit, triple
from pipeline.build.recipe import load_recipes
from pipeline.errors import PipelineError, report
from pipeline.fleet import publish
from pipeline.fleet.inventory import Inventory, load_inventory
from pipeline.lab.smoke import boot_once
from pipeline.naming import SUFFIXES, Triple
from pipeline.project import Project

PROG = "python3 -m pipeline"


# -- checks of built triples --------------------------------------------------------

def _triple(arg: str | Path) -> Triple:
    """The triple a manifest, or any other file of the triple, belongs to."""
    path = Path(arg)
    for suffix in SUFFIXES.values():
        if path.name.endswith(suffix):
            path = path.with_name(path.name[: -len(suffix)] + SUFFIXES["manifest"])
            break
    try:
        return Triple.from_manifest(path)
    except ValueError as exc:
        raise PipelineError(f"{arg}: {exc}") from None


def _audit(t: Triple) -> list[str]:
    return audit.audit_triple(t)


def _fit(t: Triple) -> list[str]:
    try:
        fit.check(t.kernel, t.initrd, t.root, t.release)
    except PipelineError as exc:
        return [str(exc)]
    return []


def _verify(t: Triple) -> list[str]:
    if not t.manifest.is_file():
        return [f"{t.manifest}: no such file"]
    return triple.verify(t)


CHECKS: dict[str, Callable[[Triple], list[str]]] = {
    "audit": _audit, "fit": _fit, "verify": _verify}


def run_check(args: argparse.Namespace) -> int:
    failed = False
    for arg in args.triple:
        t = _triple(arg)
        problems = CHECKS[args.command](t)
        for problem in problems:
            print(problem)
        if problems:
            failed = True
        else:
            print(f"{t.stem}: {args.command} ok")
    return 1 if failed else 0


# -- the fleet ----------------------------------------------------------------------

def run_fleet(args: argparse.Namespace) -> int:
    project = Project.at(args.project or Path.cwd())
    path = args.inventory or project.inventory
    triples = args.triples or project.triples
    if not path.is_file():
        raise PipelineError(f"{path}: no such inventory",
                            hint="copy inventory.example.yaml to inventory.yaml and edit it")
    recipes = {r.image: r for r in load_recipes(project.recipes, project.overlays)}
    fleet: Inventory = load_inventory(path, recipes)
    if args.command == "publish":
        publish.publish(fleet, triples, apply_tgt=args.apply, tgt_control_port=args.control_port)
    elif args.command == "gc":
        publish.gc(fleet, triples)
    elif args.command == "reprovision":
        publish.reprovision(fleet, args.name, triples, apply_tgt=args.apply,
                            tgt_control_port=args.control_port)
    else:
        publish.remove_backup(fleet, args.name)
    return 0


# -- the boot lab -------------------------------------------------------------------

def run_lab(args: argparse.Namespace) -> int:
    # Progress lines appear as they happen, also through a pipe (CI logs).
    sys.stdout.reconfigure(line_buffering=True)
    # SIGTERM ends the lab like Ctrl-C: through the lab's clean-up, which stops
    # every process it started and removes the namespace.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return boot_once(_triple(args.manifest), links_down=tuple(args.down),
                     timeout=args.timeout, keep=args.keep)


# -- the parser ---------------------------------------------------------------------

def _fleet_options(parser: argparse.ArgumentParser, *, named: bool, apply: bool) -> None:
    if named:
        parser.add_argument("name", help="the machine's name in the inventory")
    parser.add_argument("--project", type=Path, metavar="DIR",
                        help="the project folder (recipes/, overlays/, out/; default: here)")
    parser.add_argument("--inventory", type=Path, metavar="FILE",
                        help="the site inventory (default: <project>/inventory.yaml)")
    parser.add_argument("--triples", type=Path, metavar="DIR",
                        help="the built triples (default: <project>/out/triples)")
    if apply:
        parser.add_argument("--apply", action="store_true",
                            help="load the tgt configuration into the running tgtd")
        parser.add_argument("--control-port", type=int, metavar="N",
                            help="tgtd's control port (tgt-admin -C)")
    parser.set_defaults(run=run_fleet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Checks of built triples, the fleet's steps and the boot lab.",
        epilog="The project is the current folder unless a command's --project says "
               "otherwise.  A problem you can fix is reported in one line, exit status 2; "
               "a check that finds problems exits 1.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    for name, summary in (("audit", "check a triple for per-machine state and secrets"),
                          ("fit", "check that kernel, initramfs and root belong together"),
                          ("verify", "check every part against the manifest's sha256")):
        check = commands.add_parser(name, help=summary, description=summary)
        check.add_argument("triple", nargs="+", metavar="MANIFEST",
                           help="a triple's manifest (or any of its files)")
        check.set_defaults(run=run_check)

    # (command, what it does, takes a machine NAME, takes --apply)
    for name, summary, named, apply in (
            ("publish", "publish the inventory's machines (boot files, disks, tgt)", False, True),
            ("gc", "remove published files no machine uses any more", False, False),
            ("reprovision", "give one machine a fresh disk; keep the old one as a backup", True, True),
            ("remove-backup", "remove the backup disk reprovision kept", True, False)):
        _fleet_options(commands.add_parser(name, help=summary, description=summary),
                       named=named, apply=apply)

    lab = commands.add_parser(
        "lab", help="boot a triple as a diskless machine in a network namespace",
        description="boot a triple as a diskless machine in a network namespace (qemu, "
                    "dnsmasq, tgtd), print the status the guest reports, power it off")
    lab.add_argument("manifest", type=Path, metavar="MANIFEST",
                     help="the triple's manifest (or any of its files)")
    lab.add_argument("--down", type=int, action="append", default=[], metavar="N",
                     help="cut this path (0 or 1) from power-on")
    lab.add_argument("--timeout", type=float, default=300, metavar="S",
                     help="seconds to wait for the multi-user target (default 300)")
    lab.add_argument("--keep", type=Path, metavar="DIR",
                     help="keep logs and the LUN copy in this folder")
    lab.set_defaults(run=run_lab)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except PipelineError as exc:
        return report(exc)
