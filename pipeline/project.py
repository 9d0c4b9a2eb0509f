"""The project: where its recipes, overlays, inventory and output live.

One object derives every project path, for the doit tasks and the command
line alike; ``pipeline.naming.Layout`` takes it from there inside ``out/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.naming import Layout


@dataclass(frozen=True)
class Project:
    root: Path
    out: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> "Project":
        """The project in folder ``root``; its output in ``out`` (default: ``root/out``)."""
        root_path = Path(root).resolve()
        return cls(root=root_path, out=Path(out).resolve() if out else root_path / "out")

    @property
    def recipes(self) -> Path:
        return self.root / "recipes"

    @property
    def overlays(self) -> Path:
        return self.root / "overlays"

    @property
    def inventory(self) -> Path:
        """The site inventory that ``publish`` and the fleet commands read by default."""
        return self.root / "inventory.yaml"

    @property
    def layout(self) -> Layout:
        return Layout(self.out)

    @property
    def triples(self) -> Path:
        return self.layout.triples
