"""User-facing errors.

A PipelineError is something the user can fix (bad recipe, missing tool, failed
command).  The entry points print its message and exit non-zero without a
traceback; programming errors still raise ordinary exceptions.
"""

from __future__ import annotations


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
