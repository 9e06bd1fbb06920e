"""The embedded services, started by the project's own code as real processes: they serve, keep their data,
refuse strangers, say clearly when a port is taken, and never outlive their parent."""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
import urllib3
from minio import Minio
from minio.error import S3Error
from redis.backoff import NoBackoff
from redis.retry import Retry

from protostar.errors import PortInUse, ServiceError
from protostar.jobs import faults
from protostar.runtime.process import free_port
from protostar.runtime.redis import EmbeddedRedis
from protostar.runtime.s3 import _AUX_PORTS, EmbeddedS3
from protostar.runtime.stack import S3Access, Stack
from protostar.settings import Settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def base_dir() -> Iterator[Path]:
    # Not tmp_path: its parents are 0700, and as root the services run as a system user that must reach them.
    path = Path(tempfile.mkdtemp(prefix="protostar-runtime-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "redis_port": free_port(),
        "postgres_port": free_port(),
        "s3_port": free_port(),
        "llm_port": free_port(),
        # Explicit, so a PROTOSTAR_* variable in the developer's shell cannot turn the embedded services off.
        "redis_url": None,
        "database_url": None,
        "s3_endpoint": None,
        "s3_access_key": None,
        "s3_secret_key": None,
        "llm_base_url": None,
        "llm_api_key": None,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def descendants(besides: list[psutil.Process] | None = None) -> list[psutil.Process]:
    """Our descendant processes, leaving out ``besides`` (those of the module's shared stack)."""
    skip = {p.pid for p in besides or []}
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in skip]


@pytest.fixture
def others() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    living = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                living.append(proc)
        except psutil.NoSuchProcess:
            pass
    return living


def leftover_sockets(settings: Settings) -> list[Path]:
    """Unix sockets weed left behind: in its data dir, or in /tmp under the names it gives this server's ports.

    Only the exact names count: /tmp also holds the sockets of weeds killed elsewhere, one of whose ports may
    since have become one of this server's ports under another role.
    """
    s3_dir = settings.data_dir / "s3"
    aux = json.loads((s3_dir / "ports.json").read_text())
    grpc = {
        "s3": aux["s3_grpc"],
        "filer": aux["filer_grpc"],
        "master": aux["master_grpc"],
        "volume": aux["volume_grpc"],
        "admin": aux["admin"] + 10_000,
    }
    in_tmp = [Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock") for kind, port in grpc.items()]
    in_tmp += [Path(f"/tmp/seaweedfs-s3-{settings.s3_port}.sock"), Path(f"/tmp/seaweedfs-filer-{aux['filer']}.sock")]
    return [*s3_dir.glob("*.sock"), *(p for p in in_tmp if p.exists())]


def sql_url(stack: Stack) -> str:
    return stack.env()["PROTOSTAR_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(scope="module")
def running() -> Iterator[Stack]:
    path = Path(tempfile.mkdtemp(prefix="protostar-runtime-"))
    path.chmod(0o755)
    stack = Stack(make_settings(path / "data"))
    stack.start()
    yield stack
    stack.stop()
    shutil.rmtree(path, ignore_errors=True)


def test_redis_stores_and_returns_values(running: Stack) -> None:
    client = redis.Redis.from_url(running.env()["PROTOSTAR_REDIS_URL"])
    client.set("greeting", "hello")
    assert client.get("greeting") == b"hello"
    client.close()


def test_redis_refuses_a_client_without_the_password(running: Stack) -> None:
    assert running.redis is not None
    client = redis.Redis(host=running.redis.host, port=running.redis.port, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.AuthenticationError):
        client.get("greeting")
    client.close()


def test_postgres_has_pgvector(running: Stack) -> None:
    with psycopg.connect(sql_url(running)) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE TABLE IF NOT EXISTS probe (id int PRIMARY KEY, embedding vector(3))")
        conn.execute("INSERT INTO probe VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0,0,1]') ON CONFLICT DO NOTHING")
        row = conn.execute("SELECT id FROM probe ORDER BY embedding <-> '[0.1,0.9,0]' LIMIT 1").fetchone()
    assert row == (2,)


def test_s3_stores_and_returns_objects(running: Stack) -> None:
    assert running.s3 is not None
    client = running.s3.client()
    assert client.bucket_exists(running.settings.s3_bucket)  # made at start
    client.put_object(running.settings.s3_bucket, "docs/a.txt", io.BytesIO(b"some text"), 9)
    assert client.get_object(running.settings.s3_bucket, "docs/a.txt").read() == b"some text"


def test_s3_refuses_anonymous_access(running: Stack) -> None:
    assert running.s3 is not None
    bucket = running.settings.s3_bucket
    running.s3.client().put_object(bucket, "secret.txt", io.BytesIO(b"x"), 1)
    http = urllib3.PoolManager(retries=False)
    base = f"http://{running.s3.endpoint}"
    assert http.request("GET", f"{base}/").status == 403
    assert http.request("GET", f"{base}/{bucket}/secret.txt").status == 403
    assert http.request("PUT", f"{base}/{bucket}/intruder.txt", body=b"x").status == 403


def test_s3_scoped_keys_reach_only_the_bucket_and_only_what_their_process_does(running: Stack) -> None:
    """The API's key reads, writes and deletes in the bucket; the ingest worker's only reads; neither makes
    buckets nor reaches another one (the root key, which made that one, stays with the operator)."""
    s3 = running.s3
    assert s3 is not None
    bucket, root = running.settings.s3_bucket, s3.client()
    if not root.bucket_exists("elsewhere"):
        root.make_bucket("elsewhere")
    root.put_object("elsewhere", "x.txt", io.BytesIO(b"x"), 1)

    def client(access: S3Access) -> Minio:
        keys = running.s3_env(access)
        assert keys["PROTOSTAR_S3_ACCESS_KEY"] != running.env()["PROTOSTAR_S3_ACCESS_KEY"]
        return Minio(
            s3.endpoint,
            access_key=keys["PROTOSTAR_S3_ACCESS_KEY"],
            secret_key=keys["PROTOSTAR_S3_SECRET_KEY"],
            secure=False,
        )

    write, read = client("write"), client("read")
    assert write.bucket_exists(bucket)
    write.put_object(bucket, "tenants/t/doc", io.BytesIO(b"data"), 4)
    assert read.get_object(bucket, "tenants/t/doc").read() == b"data"
    assert read.stat_object(bucket, "tenants/t/doc").size == 4  # what fget_object asks first
    denied = [
        lambda: read.put_object(bucket, "tenants/t/other", io.BytesIO(b"d"), 1),
        lambda: read.remove_object(bucket, "tenants/t/doc"),
        lambda: list(read.list_objects(bucket)),
        *(lambda c=c: c.make_bucket("newbucket") for c in (read, write)),
        *(lambda c=c: c.get_object("elsewhere", "x.txt").read() for c in (read, write)),
        lambda: write.put_object("elsewhere", "y.txt", io.BytesIO(b"y"), 1),
    ]
    for attempt in denied:
        with pytest.raises(S3Error) as refused:
            attempt()
        assert refused.value.code == "AccessDenied"
    write.remove_object(bucket, "tenants/t/doc")


def test_redis_has_a_memory_cap_and_never_evicts(running: Stack) -> None:
    client = redis.Redis.from_url(running.env()["PROTOSTAR_REDIS_URL"])
    assert client.config_get("maxmemory")["maxmemory"] == str(running.settings.redis_maxmemory_mb * 1024 * 1024)
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    client.close()


def test_a_full_redis_refuses_writes_keeps_its_data_and_counts_as_unavailable(base_dir: Path) -> None:
    server = EmbeddedRedis(data_dir=base_dir / "redis", port=free_port(), password="pw", maxmemory_mb=16)
    server.start()
    try:
        client = redis.Redis(host=server.host, port=server.port, password="pw")
        written = 0
        with pytest.raises(redis.exceptions.OutOfMemoryError) as full:
            for written in range(64):
                client.set(f"k{written}", b"x" * 1024 * 1024)
        assert written > 4
        assert all(client.exists(f"k{i}") for i in range(written))  # nothing evicted
        assert faults.dependency(full.value) == faults.REDIS  # a job retries it, the API answers 503
        client.close()
    finally:
        server.stop()


def test_services_bind_only_the_configured_host(running: Stack) -> None:
    pids = set(running.pids().values())
    listening = [
        conn.laddr
        for pid in pids
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        for conn in proc.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert len(listening) >= 11  # redis, postgres, llm, and weed's S3, master, volume, filer, admin and their gRPC
    assert {addr.ip for addr in listening} == {"127.0.0.1"}


def test_restart_keeps_data_and_stop_leaves_no_process(base_dir: Path, others: list[psutil.Process]) -> None:
    settings = make_settings(base_dir / "data")
    first = Stack(settings)
    first.start()
    children = descendants(others)
    assert set(first.pids().values()) <= {p.pid for p in children}
    redis.Redis.from_url(first.env()["PROTOSTAR_REDIS_URL"]).set("kept", "yes")
    with psycopg.connect(sql_url(first)) as conn:
        conn.execute("CREATE TABLE kept (id int, embedding vector(2))")
        conn.execute("INSERT INTO kept VALUES (7, '[1,2]')")
    assert first.s3 is not None
    first.s3.client().put_object(settings.s3_bucket, "kept.txt", io.BytesIO(b"kept"), 4)
    env = first.env()
    first.stop()
    first.stop()  # idempotent
    assert alive(children) == []
    assert leftover_sockets(settings) == []

    with Stack(settings) as second:
        assert second.env() == env  # the same credentials, from secrets.json
        assert redis.Redis.from_url(second.env()["PROTOSTAR_REDIS_URL"]).get("kept") == b"yes"
        with psycopg.connect(sql_url(second)) as conn:
            assert conn.execute("SELECT id, embedding::text FROM kept").fetchall() == [(7, "[1,2]")]
        assert second.s3 is not None
        assert second.s3.client().get_object(settings.s3_bucket, "kept.txt").read() == b"kept"
        children = descendants(others)
    assert alive(children) == []
    assert stat.S_IMODE((settings.data_dir / "secrets.json").stat().st_mode) == 0o600


def test_weed_is_started_again_on_new_ports_when_one_is_taken_as_it_starts(base_dir: Path) -> None:
    """weed checks its helper ports itself as it starts, on every interface, and exits when one is taken. A
    listener on IPv6's loopback, which our IPv4 checks do not see, stands for a port taken after our pick."""
    taken = free_port()
    blocker = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        blocker.bind(("::1", taken))
    except OSError:
        blocker.close()
        pytest.skip("no IPv6 loopback on this machine")
    blocker.listen()
    s3 = EmbeddedS3(data_dir=base_dir / "s3", port=free_port(), access_key="ak" * 8, secret_key="sk" * 16)
    s3.data_dir.mkdir(mode=0o755)
    kept = {name: free_port() for name in _AUX_PORTS} | {"admin": taken}
    (s3.data_dir / "ports.json").write_text(json.dumps(kept))
    try:
        s3.start(timeout=60)
        assert s3.client().list_buckets() == []
        assert json.loads((s3.data_dir / "ports.json").read_text())["admin"] != taken
        assert "Port allocation failed" in (s3.data_dir / "weed.log").read_text()  # the first start's
    finally:
        s3.stop()
        blocker.close()


def test_a_busy_port_is_reported_clearly(base_dir: Path, others: list[psutil.Process]) -> None:
    settings = make_settings(base_dir / "data")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings.redis_port))
        squatter.listen()
        stack = Stack(settings)
        with pytest.raises(PortInUse) as caught:
            stack.start()
    assert str(caught.value) == (
        f"port {settings.redis_port} on 127.0.0.1 is already in use, so the embedded redis cannot start; "
        "stop what uses it or set PROTOSTAR_REDIS_PORT"
    )
    assert descendants(others) == []


def test_a_failed_start_stops_the_services_already_started(base_dir: Path, others: list[psutil.Process]) -> None:
    settings = make_settings(base_dir / "data")
    broken = settings.data_dir / "postgres"
    broken.mkdir(parents=True)
    (broken / "initdb.done").write_text("protostar")  # claims a cluster that is not there: postgres exits
    stack = Stack(settings)
    with pytest.raises(ServiceError, match=r"postgres.*exited") as caught:
        stack.start()
    assert "pgdata" in str(caught.value)  # the tail of postgres.log explains why
    assert stack.pids() == {}
    deadline = time.monotonic() + 10
    while alive(descendants(others)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(descendants(others)) == []


def test_secrets_are_generated_once_and_kept(base_dir: Path) -> None:
    settings = make_settings(base_dir / "data")
    password = Stack(settings).secret("flower_password")
    again = Stack(settings)
    assert again.secret("flower_password") == password
    assert again.secrets["flower_password"] == password
    assert json.loads((settings.data_dir / "secrets.json").read_text())["flower_password"] == password


def test_only_unconfigured_services_are_embedded(base_dir: Path) -> None:
    settings = make_settings(
        base_dir / "data",
        redis_url="redis://elsewhere:6379/0",
        s3_endpoint="s3.example:9000",
        llm_base_url="https://llm.example/v1",
    )
    stack = Stack(settings)
    assert [service.name for service in stack.services] == ["postgres"]
    assert set(stack.env()) == {"PROTOSTAR_DATABASE_URL"}


ORPHAN_SCRIPT = """
import json, sys, time
from pathlib import Path
from protostar.runtime.stack import Stack
from protostar.settings import Settings

settings = Settings(data_dir=Path(sys.argv[1]), redis_port=int(sys.argv[2]), postgres_port=int(sys.argv[3]),
                    s3_port=int(sys.argv[4]), llm_port=int(sys.argv[5]), redis_url=None, database_url=None,
                    s3_endpoint=None, llm_base_url=None)
stack = Stack(settings)
stack.start()
print(json.dumps(stack.pids()), flush=True)
time.sleep(600)
"""


def test_killing_the_parent_leaves_no_orphan(base_dir: Path) -> None:
    settings = make_settings(base_dir / "data")
    ports = [str(settings.redis_port), str(settings.postgres_port), str(settings.s3_port), str(settings.llm_port)]
    with (base_dir / "parent.log").open("wb") as log:
        parent = subprocess.Popen(
            [sys.executable, "-c", ORPHAN_SCRIPT, str(settings.data_dir), *ports],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], 60)
        line = parent.stdout.readline() if ready else b""
        assert line, f"the stack did not start: {(base_dir / 'parent.log').read_text()[-2000:]}"
        pids = json.loads(line)
        assert set(pids) == {"redis", "postgres", "s3", "llm"}
        services = psutil.Process(parent.pid).children(recursive=True)
        assert set(pids.values()) <= {p.pid for p in services}
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 35
    while alive(services) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(services) == [], f"orphans: {[(p.pid, p.name()) for p in alive(services)]}"
