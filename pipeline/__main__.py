"""Command line for checks and fleet steps that stand on their own.

    python3 -m pipeline audit  out/triples/<image>_<release>.manifest.json
    python3 -m pipeline fit    out/triples/<image>_<release>.manifest.json
    python3 -m pipeline verify out/triples/<image>_<release>.manifest.json

Each takes one or more manifests (or any file of a triple) and exits non-zero
with one line per problem.

    python3 -m pipeline publish       [--inventory FILE] [--apply [--control-port N]]
    python3 -m pipeline gc            [--inventory FILE]
    python3 -m pipeline reprovision   NAME [--inventory FILE] [--apply [--control-port N]]
    python3 -m pipeline remove-backup NAME [--inventory FILE]

work on the site inventory (default: inventory.yaml in the project, the
current folder unless --project says otherwise) and the triples in
<project>/out/triples (or --triples).  ``doit publish`` builds first, then
publishes; ``gc`` removes published files no machine uses any more;
``reprovision`` gives one named machine a fresh disk and keeps the old one
as a backup until ``remove-backup``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.build import audit, fit, triple
from pipeline.fleet import publish
from pipeline.errors import PipelineError, report
from pipeline.fleet.inventory import Inventory, load_inventory
from pipeline.naming import SUFFIXES, Layout, Triple
from pipeline.build.recipe import load_recipes


def _triple(arg: str) -> Triple:
    path = Path(arg)
    for suffix in SUFFIXES.values():
        if path.name.endswith(suffix):
            path = path.with_name(path.name[: -len(suffix)] + SUFFIXES["manifest"])
            break
    try:
        return Triple.from_manifest(path)
    except ValueError as exc:
        raise PipelineError(f"{arg}: {exc}") from None


def cmd_audit(t: Triple) -> list[str]:
    return audit.audit_triple(t)


def cmd_fit(t: Triple) -> list[str]:
    try:
        fit.check(t.kernel, t.initrd, t.root, t.release)
    except PipelineError as exc:
        return [str(exc)]
    return []


def cmd_verify(t: Triple) -> list[str]:
    if not t.manifest.is_file():
        return [f"{t.manifest}: no such file"]
    return triple.verify(t)


COMMANDS = {"audit": cmd_audit, "fit": cmd_fit, "verify": cmd_verify}


FLEET_COMMANDS = ("publish", "gc", "reprovision", "remove-backup")


def _fleet_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python3 -m pipeline {command}")
    if command in ("reprovision", "remove-backup"):
        parser.add_argument("name", help="the machine's name in the inventory")
    parser.add_argument("--project", type=Path, default=Path.cwd(),
                        help="the project folder (recipes/, overlays/, out/; default: here)")
    parser.add_argument("--inventory", type=Path,
                        help="the site inventory (default: <project>/inventory.yaml)")
    parser.add_argument("--triples", type=Path,
                        help="the built triples (default: <project>/out/triples)")
    if command in ("publish", "reprovision"):
        parser.add_argument("--apply", action="store_true",
                            help="load the tgt configuration into the running tgtd")
        parser.add_argument("--control-port", type=int, help="tgtd's control port (tgt-admin -C)")
    return parser


def fleet_main(command: str, argv: list[str]) -> int:
    args = _fleet_parser(command).parse_args(argv)
    project = args.project.resolve()
    path = args.inventory or project / "inventory.yaml"
    triples = args.triples or Layout(project / "out").triples
    try:
        if not path.is_file():
            raise PipelineError(f"{path}: no such inventory",
                                hint="copy inventory.example.yaml to inventory.yaml and edit it")
        recipes = {r.image: r for r in load_recipes(project / "recipes", project / "overlays")}
        fleet: Inventory = load_inventory(path, recipes)
        if command == "publish":
            publish.publish(fleet, triples, apply_tgt=args.apply, tgt_control_port=args.control_port)
        elif command == "gc":
            publish.gc(fleet, triples)
        elif command == "reprovision":
            publish.reprovision(fleet, args.name, triples, apply_tgt=args.apply,
                                tgt_control_port=args.control_port)
        else:
            publish.remove_backup(fleet, args.name)
    except PipelineError as exc:
        return report(exc)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in FLEET_COMMANDS:
        return fleet_main(argv[0], argv[1:])
    parser = argparse.ArgumentParser(prog="python3 -m pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS) + list(FLEET_COMMANDS))
    parser.add_argument("triple", nargs="+", help="a triple's manifest (or any of its files)")
    args = parser.parse_args(argv)
    failed = False
    try:
        for arg in args.triple:
            t = _triple(arg)
            problems = COMMANDS[args.command](t)
            for problem in problems:
                print(problem)
            if problems:
                failed = True
            else:
                print(f"{t.stem}: {args.command} ok")
    except PipelineError as exc:
        return report(exc)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
