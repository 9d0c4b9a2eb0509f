"""User-facing errors.

A PipelineError is something the user can fix (bad recipe, missing tool, failed
command).  The entry points print its message and exit non-zero without a
traceback; programming errors still raise ordinary exceptions.
"""

from __future__ import annotations

import sys

# Exit status of every entry point for a problem the user can fix.
EXIT_USER_ERROR = 2


class PipelineError(Exception):
    """An error to show to the user as text, optionally with a hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message


class ConfigError(PipelineError):
    """One or more problems in a configuration file (recipe, inventory).

    Every problem is one line: ``<file>: <key path>: <what was expected>``.
    All problems of a file are collected and reported together.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def report(exc: PipelineError, heading: str | None = None) -> int:
    """The one way an entry point shows a user error; returns the exit status (2).

    A ConfigError with a ``heading`` prints the heading, then each problem
    indented on its own line; anything else prints ``error: <message>``
    (and its hint).  No traceback: ``exc`` is something the user can fix.
    """
    if heading and isinstance(exc, ConfigError):
        print(f"error: {heading}", file=sys.stderr)
        for problem in exc.problems:
            print("  " + problem, file=sys.stderr)
    else:
        print(f"error: {exc}", file=sys.stderr)
    return EXIT_USER_ERROR
