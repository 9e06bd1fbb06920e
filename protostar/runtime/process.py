"""Child processes that never outlive us, ports, readiness polls and the system user services run as.

Every embedded service is a plain child process: started in the foreground, in its own process group (so a
Ctrl-C in the terminal reaches only us, and we stop the children in order), and tied to our life with
``PR_SET_PDEATHSIG``. The kernel sends that signal when the *thread* that spawned the child exits, so spawn
long-running services from a long-lived thread (the main thread), never from a short-lived worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import importlib.metadata
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from protostar.errors import PortInUse, ServiceError
from protostar.runtime import signals

logger = logging.getLogger(__name__)
_PICK_SPAN = 16_384  # free_port picks among this many ports just below the ephemeral range

PR_SET_PDEATHSIG = 1
SERVICE_USER = "protostar"
_LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class ServiceUser:
    """The unprivileged system user services run as when we are root."""

    name: str
    uid: int
    gid: int


def find_executable(name: str, *, distribution: str) -> Path:
    """The executable ``name`` shipped by the installed ``distribution`` (a PyPI name), found via its RECORD."""
    candidates: list[Path] = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        files = importlib.metadata.files(distribution) or []
        candidates += [Path(str(f.locate())).resolve() for f in files if f.name == name]
    candidates.append(Path(sys.executable).parent / name)  # the venv's bin/, where wheels put scripts
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ServiceError(f"cannot find the {name} executable; install it with: pip install {distribution}")


@functools.cache
def _libc() -> ctypes.CDLL:
    # Loaded in the parent: dlopen after fork, in preexec_fn, is not safe.
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def spawn(
    argv: list[str],
    *,
    name: str,
    log_file: Path | None = None,
    env: dict[str, str] | None = None,
    run_as: str | None = None,
    stdout: int | None = None,
    death_signal: int = signal.SIGTERM,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a child that receives ``death_signal`` when we die, in its own process group.

    Output goes to ``log_file`` (appended) or else to ``stdout``. With ``run_as`` the child drops to that
    system user before anything else (the kernel clears the parent-death signal on a credential change, so
    the drop must come first).
    """
    libc = _libc()
    parent_pid = os.getpid()
    user = pwd.getpwnam(run_as) if run_as is not None else None  # resolved here: NSS after fork is unsafe

    def preexec() -> None:
        os.setpgrp()
        if user is not None:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        if libc.prctl(PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent_pid:  # we died between fork and prctl
            os._exit(1)

    output: int | None = stdout
    log_fd: int | None = None
    if log_file is not None:
        log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        if user is not None:
            os.fchown(log_fd, user.pw_uid, user.pw_gid)
        output = log_fd
    # A stop signal during the fork is only noted: raised in an at-fork callback, its exception would be
    # swallowed with logging's lock left held (see runtime.signals); the caller's next checkpoint raises it.
    try:
        with signals.deferred():
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output is not None else None,
                env=env,
                cwd=cwd,
                # Only preexec_fn can set the parent-death signal. Stack spawns from one thread; see the module doc.
                preexec_fn=preexec,  # noqa: PLW1509
                close_fds=True,
            )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServiceError(f"could not start {name} ({argv[0]}): {exc}") from exc
    finally:
        if log_fd is not None:
            os.close(log_fd)
    logger.info("started %s pid=%d user=%s", name, proc.pid, run_as or "<current>")
    return proc


def stop(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Send ``sig``, wait up to ``timeout`` seconds, then SIGKILL the whole process group. Never raises."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        logger.warning("pid=%d ignored signal %d for %.1f s, killing its process group", proc.pid, sig, timeout)
    # The leader is not reaped yet, so its pid is still its process group's id: no risk of a reused pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10.0)


def port_env_var(service: str) -> str:
    return f"PROTOSTAR_{service.upper()}_PORT"


def ensure_port_free(host: str, port: int, service: str, env_var: str | None = None) -> None:
    """Raise PortInUse, naming the setting to change, if something already listens on host:port."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR, as servers set it: a TIME_WAIT leftover is not "in use", a listener is.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise ServiceError(f"cannot bind {host}:{port} for the embedded {service}: {exc}") from exc
            raise PortInUse(
                f"port {port} on {host} is already in use, so the embedded {service} cannot start; "
                f"stop what uses it or set {env_var or port_env_var(service)}"
            ) from exc


def hold_port(host: str, port: int) -> socket.socket | None:
    """Bind ``host:port`` without listening, to keep it for a server started later; close it just before.

    Without SO_REUSEADDR, so every other bind fails meanwhile (ours and other programs' alike). None when
    only a connection in TIME_WAIT stands in the way: the port is free, just not holdable.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now, picked at random below the kernel's range for outgoing connections.

    Not the kernel's own pick (``bind(0)``): that comes from the same range as the local ports of outgoing
    connections, so a client connecting before the server binds (a worker's connection to Redis) could take it,
    and hold it as long as it stays connected (Flower then failed six times to bind and ``up`` gave up). Racy by
    nature between the pick and the bind, as any such pick."""
    low = ephemeral_ports()[0]
    span = min(_PICK_SPAN, low - 1024)
    for _ in range(200 if span > 0 else 0):
        port = low - span + secrets.randbelow(span)
        if port_is_free(host, port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # all taken: the kernel's pick, as before
        sock.bind((host, 0))
        picked: int = sock.getsockname()[1]
        return picked


def ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes outgoing connections' local ports from (Linux's default when unreadable)."""
    try:
        low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def port_is_free(host: str, port: int) -> bool:
    try:
        ensure_port_free(host, port, "probe")
    except ServiceError:
        return False
    return True


def log_tail(log_file: Path | None, lines: int = _LOG_TAIL_LINES) -> str:
    if log_file is None or not log_file.exists():
        return ""
    with log_file.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 16_384))
        text = fh.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log_file: Path | None = None,
    interval: float = 0.05,
) -> None:
    """Poll ``check`` until it returns True; raise ServiceError if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        signals.checkpoint()  # a stop signal noted during a spawn
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise ServiceError(
                f"{what}: the process exited with code {proc.returncode}; last log lines:\n{log_tail(log_file)}"
            )
        if time.monotonic() >= deadline:
            raise ServiceError(f"{what}: not ready after {timeout:.0f} s; last log lines:\n{log_tail(log_file)}")
        time.sleep(interval)


# --- the system user ------------------------------------------------------------------------------------


def service_user(name: str = SERVICE_USER) -> ServiceUser | None:
    """As root: the system user services run as, created if missing. Otherwise None (the current user)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        logger.info("creating system user %s", name)
        result = subprocess.run(
            [useradd, "-r", "-M", "-s", "/usr/sbin/nologin", name], capture_output=True, text=True, check=False
        )
        # 9: the user appeared meanwhile (another process created it first).
        if result.returncode not in (0, 9):
            raise ServiceError(f"could not create system user {name}: {result.stderr.strip()}") from None
        entry = pwd.getpwnam(name)
    return ServiceUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def make_dirs(path: Path, *, traversable: bool) -> list[Path]:
    """Create ``path`` and missing parents; return those created. ``traversable`` adds o+x to each of them."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    created: list[Path] = []
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
            created.append(directory)
            if traversable:
                directory.chmod(directory.stat().st_mode | stat.S_IXOTH)
    return created


def can_traverse(directory: Path, user: ServiceUser) -> bool:
    st = directory.stat()
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == user.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def prepare_dir(path: Path, *, owner: ServiceUser | None) -> None:
    """Create a service's private directory (0700), owned by ``owner`` when given.

    Parents we create get o+x so ``owner`` can reach the directory; a parent that exists and that ``owner``
    cannot traverse is an error naming it, never silently opened up.
    """
    make_dirs(path, traversable=owner is not None)
    if owner is not None:
        for parent in reversed(path.parents):
            if not can_traverse(parent, owner):
                raise ServiceError(
                    f"{parent} cannot be traversed by user {owner.name}, which the embedded PostgreSQL runs as "
                    f"when started as root, and {path} already holds data; move {path} away (the next start "
                    "keeps that data under /var/lib/protostar instead) or choose another data_dir"
                )
        chown_tree(path, owner)
    try:
        path.chmod(0o700)
    except PermissionError:
        raise ServiceError(
            f"{path} belongs to uid {path.stat().st_uid} (after a start as root, to user {SERVICE_USER}); "
            "start as that user or as root, or choose another data_dir"
        ) from None


def chown_tree(path: Path, owner: ServiceUser) -> None:
    """Give ``path`` and everything below it to ``owner`` (a no-op when the top already belongs to it)."""
    if path.stat().st_uid == owner.uid:
        return
    logger.info("handing %s to user %s", path, owner.name)
    for root, dirs, files in os.walk(path):
        for entry in (root, *(os.path.join(root, n) for n in (*dirs, *files))):
            os.lchown(entry, owner.uid, owner.gid)


def write_private(path: Path, text: str, *, owner: ServiceUser | None) -> None:
    """Write ``text`` to ``path`` readable only by ``owner`` (or by us), replacing it atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        if owner is not None:
            os.fchown(fd, owner.uid, owner.gid)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
