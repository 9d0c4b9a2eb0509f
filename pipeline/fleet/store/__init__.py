"""Where machine disks live: one interface, a backend per kind of storage.

A store holds *templates* — a triple's root image, put in once and never
changed — and one *disk* per machine, cloned once from a template and given
the machine's own file-system UUID.  A disk is never overwritten; a
re-provision keeps the old one as a backup until it is removed.  Publish,
gc, re-provision and remove-backup (pipeline/fleet/publish.py) and the plan
(pipeline/fleet/plan.py) reach disks through :class:`DiskStore` only.

Backends:

``file`` (default, :mod:`.file`)
    files in the site's store folder: ``templates/<name>`` (mode 0444),
    ``disks/<mac>.ext4`` (a reflink or sparse copy, mode 0600).
``rbd`` (:mod:`.rbd`)
    images in a Ceph pool: the template imported once, snapshotted and
    protected; each disk a layered clone of that snapshot.

Names come from pipeline.naming in both: a template is named like the file
``templates/<name>``, a disk like ``disks/<mac>.ext4``.  What a backend
hands back for a disk or template (a :data:`Ref`) is what the user is shown
and what reports list: a path for ``file``, ``<pool>/<image>`` for ``rbd``.

Records (which template a disk came from), the tgt configuration and the
CHAP secrets stay files in the site's store folder whatever the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Union

from pipeline.errors import ConfigError
from pipeline.naming import Store

Ref = Union[Path, str]

BACKENDS = ("file", "rbd")


@dataclass(frozen=True)
class Space:
    """Bytes the store's disks and templates could hold and really take."""

    provisioned: int
    used: int


class DiskStore(Protocol):
    kind: str

    def tools(self) -> list[str]:
        """Host tools the backend runs (checked before anything is done)."""

    def check(self) -> None:
        """Raise a one-line PipelineError when the store cannot be used."""

    def prepare(self) -> None:
        """Make the store ready for writing (folders, ...)."""

    # -- templates: named by content (pipeline.naming.published_name) ------
    def has_template(self, name: str) -> bool: ...

    def template_ref(self, name: str) -> Ref: ...

    def put_template(self, name: str, root_image: Path) -> Ref:
        """Put a triple's root image in, read-only, under ``name``."""

    def template_names(self) -> list[str]:
        """Templates in the store, and leftovers (``<name>.partial``) of puts
        that were interrupted."""

    def template_kept_because(self, name: str) -> str | None:
        """Why an unused template may not be removed (None: it may)."""

    def remove_template(self, name: str) -> Ref: ...

    # -- machine disks: named by MAC ---------------------------------------
    def disk_ref(self, mac: str) -> Ref: ...

    def has_disk(self, mac: str) -> bool: ...

    def clone(self, template: str, mac: str, fs_uuid: str) -> Ref:
        """Make the machine's disk from ``template`` with its own UUID;
        a PipelineError if the machine already has a disk."""

    def disk_releases(self, mac: str) -> set[str]:
        """Kernel releases in the disk's /lib/modules (read-only)."""

    def disks(self) -> list[Ref]:
        """Every machine disk in the store (not backups, not leftovers)."""

    def remove_leftovers(self) -> list[Ref]:
        """Remove what interrupted clones left; return what was removed."""

    def keep_backup(self, mac: str, stamp: str) -> Ref:
        """Move the machine's disk aside as its backup of UTC time ``stamp``."""

    def backups(self, mac: str) -> list[Ref]: ...

    def remove_backup(self, ref: Ref) -> None: ...

    def space(self) -> Space: ...

    def tgt_backing(self, mac: str) -> list[str]:
        """The lines of the machine's tgt target that name its disk."""


def open_store(site: Any, *, backend: str | None = None, settings: Any = None) -> DiskStore:
    """The store of a site (an inventory's Site).

    The backend is ``backend``, else the site's ``store_backend``, else
    ``file``; the rbd backend's settings are ``settings``, else the site's
    ``rbd`` (the inventory's RbdSite, an RbdSettings, or a mapping with its keys).
    """
    kind = backend or getattr(site, "store_backend", None) or "file"
    naming = Store(Path(site.store))
    if kind == "file":
        from pipeline.fleet.store.file import FileStore
        return FileStore(naming)
    if kind == "rbd":
        from pipeline.fleet.store.rbd import RbdSettings, RbdStore
        given = settings if settings is not None else getattr(site, "rbd", None)
        if given is not None and not isinstance(given, (RbdSettings, dict)):
            # the inventory's RbdSite: already checked, one line per problem
            given = RbdSettings(given.conf, given.client_id, given.keyring, given.pool)
        if not isinstance(given, RbdSettings):
            given = RbdSettings.from_mapping(given, where=f"{getattr(site, 'path', 'site')}: site.rbd")
        return RbdStore(given, naming)
    raise ConfigError([f"site.store_backend: expected one of {', '.join(BACKENDS)}, got {kind!r}"])


__all__ = ["BACKENDS", "DiskStore", "Ref", "Space", "open_store"]
