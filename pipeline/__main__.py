"""Command line for checks that stand on their own.

    python3 -m pipeline audit  out/triples/<image>_<release>.manifest.json
    python3 -m pipeline fit    out/triples/<image>_<release>.manifest.json
    python3 -m pipeline verify out/triples/<image>_<release>.manifest.json

Each takes one or more manifests (or any file of a triple) and exits non-zero
with one line per problem.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import audit, fit, triple
from .errors import PipelineError
from .naming import SUFFIXES, Triple


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS))
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
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
