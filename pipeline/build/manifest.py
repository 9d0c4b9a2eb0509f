"""The manifest: what a triple is made of, enough to check and rebuild it.

It holds no build time and no host name: two builds of the same inputs give
the same manifest.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import __version__, runner
from pipeline.fsutil import sha256_file
from pipeline.build.recipe import Recipe

FORMAT = 1


def packages(tree: Path) -> dict[str, str]:
    """Installed packages of a tree, name -> version."""
    text = runner.output(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W",
                          "-f", "${db:Status-Abbrev}\t${binary:Package}\t${Version}\n"])
    result = {}
    for line in text.splitlines():
        status, name, version = line.split("\t")
        if status.startswith("ii"):
            result[name] = version
    return dict(sorted(result.items()))


def tool_versions(recipe: Recipe, image_packages: dict[str, str]) -> dict[str, str]:
    # Imported here: the bootstrappers use lock, which uses this module.
    from pipeline.build import bootstrappers
    versions = {
        "image-pipeline": __version__,
        recipe.bootstrapper: bootstrappers.tool_version(recipe.bootstrapper),
        "mke2fs": runner.tool_version(["mkfs.ext4", "-V"]),
    }
    versions["initramfs-tools (image)"] = image_packages.get("initramfs-tools", "unknown")
    return versions


def part_entry(path: Path, final_name: str) -> dict[str, object]:
    return {"file": final_name, "sha256": sha256_file(path), "size": path.stat().st_size}


def build(recipe: Recipe, flavour: str, release: str, tree: Path,
          parts: dict[str, tuple[Path, str]], root_info: dict[str, str]) -> dict[str, object]:
    """The manifest of one triple.

    ``parts`` maps kernel/initrd/root to (file to hash, its final name).
    """
    entries = {role: part_entry(path, name) for role, (path, name) in parts.items()}
    entries["root"].update(root_info)
    installed = packages(tree)
    return {
        "format": FORMAT,
        "image": recipe.image,
        "flavour": flavour,
        "kernel_release": release,
        "suite": recipe.suite,
        "parts": entries,
        # triple_digest: a locked rebuild from another mirror is the same triple.
        "recipe": {"file": recipe.path.name, "digest": recipe.triple_digest},
        "source_date_epoch": recipe.source_date_epoch,
        "packages": installed,
        "tools": tool_versions(recipe, installed),
    }
