"""Step 4: assemble, check and name one triple.

The kernel, the initramfs and the root image are written under temporary
names, checked (fit and audit) as the files they will be, and only then
renamed into place, the manifest last: a triple whose manifest exists is
complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.build import audit, fit, manifest
from pipeline import ext4
from pipeline.fsutil import commit, fresh_partial, sha256_file, write_json
from pipeline.naming import Layout, Triple
from pipeline.build.recipe import Recipe


def assemble(recipe: Recipe, flavour: str, release: str, tree: Path, layout: Layout) -> Triple:
    triple = layout.triple(recipe.image, release)
    layout.triples.mkdir(parents=True, exist_ok=True)
    tmp = {part: fresh_partial(path) for part, path in triple.parts().items()}
    shutil.copyfile(tree / "boot" / f"vmlinuz-{release}", tmp["kernel"])
    shutil.copyfile(tree / "boot" / f"initrd.img-{release}", tmp["initrd"])
    # Derived, never random: the same recipe and release give the same bytes.
    fs_uuid = ext4.derived_uuid("root", recipe.triple_digest, release)
    hash_seed = ext4.derived_uuid("hash-seed", recipe.triple_digest, release)
    ext4.make_image(tree, tmp["root"], label=recipe.root_image.label, fs_uuid=fs_uuid,
                    hash_seed=hash_seed, headroom_percent=recipe.root_image.headroom_percent,
                    headroom_mib=recipe.root_image.headroom_mib,
                    source_date_epoch=recipe.source_date_epoch)
    for path in tmp.values():
        os.chmod(path, 0o644)
    fit.check(tmp["kernel"], tmp["initrd"], tmp["root"], release)
    audit.require_clean(audit.audit_parts(tmp["initrd"], tmp["root"]))
    data = manifest.build(recipe, flavour, release, tree,
                          {part: (tmp[part], triple.path(part).name) for part in tmp},
                          {"label": recipe.root_image.label, "uuid": fs_uuid})
    for part in ("kernel", "initrd", "root"):
        commit(tmp[part], triple.path(part))
    write_json(triple.manifest, data)
    return triple


def verify(triple: Triple) -> list[str]:
    """Problems with a triple's files against its manifest (hashes, sizes)."""
    from pipeline.fsutil import read_json
    data = read_json(triple.manifest)
    problems = []
    for part, path in triple.parts().items():
        entry = data["parts"][part]
        if entry["file"] != path.name:
            problems.append(f"{triple.manifest.name}: parts.{part}.file is {entry['file']}, expected {path.name}")
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{path}: does not match the manifest's size or sha256")
    return problems
