"""Faults and their accounting, shared by ``bench.chaos`` and the fault tests (``tests/faults``).

* :class:`Traffic`: every request sent with a timeout, its answer, refusal (503), error or hang recorded with
  when it was sent, so an outage's window can be read back (:meth:`Traffic.during`).
* :class:`Workload`: tenants (:func:`new_tenant`), uploads, chat questions, session summaries and probes
  submitted through the API; every accepted job kept (:class:`Accepted`). :class:`Pump` submits from a
  thread until stopped (the load under which a fault happens).
* :func:`outcome` / :func:`settle`: what became of the accepted jobs, read from the database (``jobs``,
  ``chunks``, ``messages``, ``summaries``): status, failure reason, lost (no row), stuck (queued or running),
  duplicated or wrong effects (chunks per document against an undisturbed ingest of the same file, assistant
  messages per question, summary rows per summary job).
* Faults from outside: :func:`kill`, :func:`freeze` / :func:`thaw`, :func:`pool_children`, :func:`restart`
  (an embedded service, from the calling thread: services die with the thread that started them), and
  :class:`Node`, a second worker host (its own worker process for every queue, another ``--hostname``,
  sharing Redis and PostgreSQL) killed whole.

Imports Protostar lazily (as ``bench.harness`` does): the environment is set before the settings are read.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

TERMINAL = ("succeeded", "failed", "cancelled")
QUESTIONS = ("Say hello in three words.", "Name one colour.", "What is two plus two?", "Say yes or no.")


# --- requests -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    what: str  # "upload", "ask", "probe", "session", "summarize"
    sent: float  # time.time()
    seconds: float
    outcome: str  # the status code as text, "hang" (past the timeout) or "error" (connection refused...)


class Traffic:
    """Requests with a timeout; each one's outcome recorded. A hang is a request that exceeded the timeout."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def send(self, client: httpx.Client, what: str, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        sent, started = time.time(), time.monotonic()
        response: httpx.Response | None = None
        try:
            response = client.request(method, path, timeout=self.timeout, **kwargs)
            outcome = str(response.status_code)
        except httpx.TimeoutException:
            outcome = "hang"
        except httpx.HTTPError:
            outcome = "error"
        with self._lock:
            self.calls.append(Call(what, sent, time.monotonic() - started, outcome))
        return response

    def during(self, start: float, end: float) -> collections.Counter[str]:
        """Outcomes of the requests sent between ``start`` and ``end`` (``time.time()``)."""
        with self._lock:
            return collections.Counter(c.outcome for c in self.calls if start <= c.sent <= end)


# --- tenants and submissions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    name: str
    key: str
    id: uuid.UUID


def new_tenant(engine: Any, prefix: str) -> Tenant:
    """A new tenant with a new (non-admin) key, made in the database as ``protostar keys create`` does."""
    from protostar.auth import create_key, ensure_tenant
    from protostar.db.engine import make_sessionmaker

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    with make_sessionmaker(engine).begin() as session:
        key = create_key(session, tenant=name)
        return Tenant(name, key, ensure_tenant(session, name))


@dataclass(frozen=True)
class Accepted:
    kind: str  # "ingest", "chat", "summary", "probe"
    job_id: str
    at: float  # time.time() when accepted
    detail: str = ""  # the file name of an upload


@dataclass
class Workload:
    """Submits work through the API and keeps every job it accepted (a 202 with a job id)."""

    url: str
    traffic: Traffic
    accepted: list[Accepted] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=self.traffic.timeout)

    def _accept(self, kind: str, response: httpx.Response | None, detail: str = "") -> str | None:
        if response is None or response.status_code != 202:
            return None
        job_id = str(response.json()["job_id"])
        with self._lock:
            self.accepted.append(Accepted(kind, job_id, time.time(), detail))
        return job_id

    def upload(self, tenant: Tenant, path: Path) -> str | None:
        with self.client(tenant.key) as api:
            response = self.traffic.send(
                api, "upload", "POST", "/v1/documents", files={"file": (path.name, path.read_bytes())}
            )
        return self._accept("ingest", response, path.name)

    def session(self, tenant: Tenant, *, attempts: int = 60) -> str:
        """A new chat session (tried until the API takes it: sessions are set up before a fault, not during)."""
        with self.client(tenant.key) as api:
            for _ in range(attempts):
                response = self.traffic.send(api, "session", "POST", "/v1/sessions", json={})
                if response is not None and response.status_code == 201:
                    return str(response.json()["session_id"])
                time.sleep(1)
        raise RuntimeError("could not create a chat session")

    def ask(self, tenant: Tenant, session_id: str, question: str) -> str | None:
        with self.client(tenant.key) as api:
            response = self.traffic.send(
                api, "ask", "POST", f"/v1/sessions/{session_id}/messages", json={"content": question}
            )
        return self._accept("chat", response)

    def summarize(self, tenant: Tenant, session_id: str) -> str | None:
        with self.client(tenant.key) as api:
            response = self.traffic.send(api, "summarize", "POST", f"/v1/sessions/{session_id}/summarize")
        return self._accept("summary", response)

    def probe(self, admin_key: str, queue: str, steps: int = 3, sleep: float = 0.2) -> str | None:
        with self.client(admin_key) as api:
            response = self.traffic.send(
                api, "probe", "POST", "/v1/probes", json={"queue": queue, "steps": steps, "sleep": sleep}
            )
        return self._accept("probe", response)

    def job_ids(self, kind: str | None = None) -> list[str]:
        with self._lock:
            return [a.job_id for a in self.accepted if kind is None or a.kind == kind]


class Pump:
    """Calls ``submit`` every ``every`` seconds from a thread until stopped (``with Pump(...):``)."""

    def __init__(self, submit: Callable[[int], object], every: float) -> None:
        self.submit, self.every = submit, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a fault's error is the Traffic's to record; the load goes on
                self.submit(self.sent)
            self.sent += 1
            self._stop.wait(self.every)

    def __enter__(self) -> Pump:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


# --- outcomes -------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    jobs: dict[str, dict[str, Any]]  # job id -> its row (and effect figures)
    accepted: list[str]
    lost: list[str] = field(default_factory=list)  # accepted, no row
    stuck: list[str] = field(default_factory=list)  # queued or running
    duplicated: list[str] = field(default_factory=list)  # more effect than one run makes
    wrong: list[str] = field(default_factory=list)  # succeeded with less (or other) effect than expected
    refused: list[str] = field(default_factory=list)  # rows of submits answered 503 (nothing queued): not accepted

    @property
    def status(self) -> collections.Counter[str]:
        return collections.Counter(j["status"] for j in self.jobs.values())

    @property
    def failed_by(self) -> collections.Counter[str]:
        return collections.Counter(
            f"{j['error_code']}: {j['error_message']}" for j in self.jobs.values() if j["status"] == "failed"
        )

    def problems(self) -> list[str]:
        """Everything that breaks "every accepted job ends exactly once with the right effect"."""
        out = [f"lost (accepted, no job row): {j}" for j in self.lost]
        out += [f"stuck {self.jobs[j]['status']}: {self.describe(j)}" for j in self.stuck]
        out += [f"failed: {self.describe(j)}" for j, r in self.jobs.items() if r["status"] == "failed"]
        out += [f"cancelled: {self.describe(j)}" for j, r in self.jobs.items() if r["status"] == "cancelled"]
        out += [f"duplicated effect: {self.describe(j)}" for j in self.duplicated]
        out += [f"wrong effect: {self.describe(j)}" for j in self.wrong]
        return out

    def describe(self, job_id: str) -> str:
        j = self.jobs[job_id]
        return (
            f"{j['kind']} {job_id} attempts={j['attempts']} worker={j['worker']} "
            f"error={j['error_code']}: {j['error_message']} effect={j.get('effect')} expected={j.get('expected')}"
        )

    def summary(self) -> str:
        return (
            f"{len(self.accepted)} accepted, {dict(self.status)}, refused (503) {len(self.refused)}, "
            f"lost {len(self.lost)}, stuck {len(self.stuck)}, "
            f"duplicated {len(self.duplicated)}, wrong {len(self.wrong)}"
        )


def outcome(
    engine: Any,
    accepted: Iterable[str],
    *,
    expected_chunks: dict[str, int] | None = None,
    tenants: Iterable[uuid.UUID] = (),
) -> Outcome:
    """What became of ``accepted`` job ids and of every job of ``tenants`` (summaries queued by the system)."""
    from sqlalchemy import text

    accepted = list(dict.fromkeys(accepted))
    tenant_ids = [str(t) for t in tenants]
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id::text AS id, kind, status, attempts, error_code, error_message, worker, payload, result,"
                " started_at, finished_at FROM jobs"
                " WHERE id::text = ANY(:ids) OR tenant_id::text = ANY(:tenants)"
            ),
            {"ids": accepted, "tenants": tenant_ids},
        ).mappings()
        jobs = {r["id"]: dict(r) for r in rows}
        # A submit the API answered 503 leaves its row failed `broker_unavailable` (the row decides: nothing was
        # queued). The caller was told so; it is no accepted job, so it is counted apart, not as a failure.
        refused = [j for j, r in jobs.items() if r["error_code"] == "broker_unavailable" and j not in accepted]
        for job_id in refused:
            del jobs[job_id]
        for job in jobs.values():
            payload = job["payload"] or {}
            if job["kind"] == "ingest":
                row = conn.execute(
                    text(
                        "SELECT d.filename, (SELECT count(*) FROM chunks c WHERE c.document_id = d.id) AS n"
                        " FROM documents d WHERE d.id::text = :d"
                    ),
                    {"d": payload.get("document_id")},
                ).first()
                job["effect"] = None if row is None else int(row.n)
                if expected_chunks is not None and row is not None:
                    job["expected"] = expected_chunks.get(row.filename)
            elif job["kind"] == "chat":
                job["effect"] = conn.execute(
                    text(
                        "SELECT count(*) FROM messages WHERE reply_to::text = :m AND role = 'assistant'"
                        " AND status = 'complete' AND content <> ''"
                    ),
                    {"m": payload.get("message_id")},
                ).scalar_one()
                job["expected"] = 1
            elif job["kind"] == "summary_session":
                job["effect"] = conn.execute(
                    text("SELECT count(*) FROM summaries WHERE job_id::text = :j"), {"j": job["id"]}
                ).scalar_one()
                written = (job["result"] or {}).get("messages", 1) > 0
                job["expected"] = 1 if written else 0
            elif job["kind"] == "probe":
                job["effect"] = None if job["status"] != "succeeded" else (job["result"] or {}).get("steps")
                job["expected"] = payload.get("steps")
    out = Outcome(jobs, accepted, refused=refused)
    out.lost = [j for j in accepted if j not in jobs]
    for job_id, job in jobs.items():
        if job["status"] not in TERMINAL:
            out.stuck.append(job_id)
            continue
        effect, expected = job.get("effect"), job.get("expected")
        if expected is None or effect is None:
            continue
        if effect > expected:
            out.duplicated.append(job_id)
        elif job["status"] == "succeeded" and effect != expected:
            out.wrong.append(job_id)
    return out


def settle(engine: Any, accepted: Iterable[str], *, timeout: float, **kwargs: Any) -> Outcome:
    """:func:`outcome` once no job is queued or running any more, or after ``timeout`` seconds (then some are)."""
    accepted = list(accepted)
    deadline = time.monotonic() + timeout
    while True:
        out = outcome(engine, accepted, **kwargs)
        if not out.stuck or time.monotonic() > deadline:
            return out
        time.sleep(1)


def recovery_seconds(out: Outcome, since: float) -> float | None:
    """Seconds from ``since`` (``time.time()``, a fault) until the last job then unfinished ended; None if any
    of them has not ended."""
    latest = since
    for job in out.jobs.values():
        if job["finished_at"] is None:
            return None
        latest = max(latest, job["finished_at"].timestamp())
    return latest - since


def running(
    engine: Any, job_ids: list[str], *, kind: str | None = None, attempts: int | None = None
) -> list[dict[str, Any]]:
    """Rows of ``job_ids`` now running (optionally of one kind / at one attempt), with the worker's pid (the
    ``jobs.worker`` column holds ``host:pid``)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id::text AS id, kind, attempts, worker, progress_done FROM jobs"
                " WHERE status = 'running' AND id::text = ANY(:ids) AND worker IS NOT NULL"
            ),
            {"ids": job_ids},
        ).mappings()
        return [
            {**r, "pid": int(r["worker"].rsplit(":", 1)[1])}
            for r in rows
            if (kind is None or r["kind"] == kind) and (attempts is None or r["attempts"] == attempts)
        ]


# --- faults ---------------------------------------------------------------------------------------------


def kill(pid: int | None, sig: int = signal.SIGKILL) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def freeze(pid: int | None) -> bool:
    return kill(pid, signal.SIGSTOP)


def thaw(pid: int | None) -> bool:
    return kill(pid, signal.SIGCONT)


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Wait until ``pid`` has exited (or is a zombie)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def pool_children(pid: int | None) -> list[int]:
    """The pool processes of a prefork worker: its direct children."""
    if pid is None:
        return []
    try:
        return [c.pid for c in psutil.Process(pid).children() if c.status() != psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


def restart(service: Any, timeout: float = 60.0) -> None:
    """Start an embedded service again unless something else has; wait until it answers. From a long-lived
    thread (the service dies with the thread that started it)."""
    thaw(service.pid)  # a frozen one answers again
    if service.pid is None:
        service.start(timeout)
    else:
        service.wait_ready(timeout)


@dataclass
class Node:
    """A second worker host: one worker process per entry of ``commands.WORKERS`` under ``--hostname
    <worker>@<name>``, sharing Redis and PostgreSQL; started and killed whole (SIGKILL to every process)."""

    settings: Any
    name: str
    env: dict[str, str]
    log: Path
    concurrency: dict[str, int] = field(default_factory=dict)  # per worker; default: the settings'
    procs: list[Any] = field(default_factory=list)

    def start(self) -> None:
        from protostar import commands
        from protostar.runtime import process

        for worker in commands.WORKERS:
            argv = commands.worker(self.settings, worker)
            argv[argv.index("--hostname") + 1] = f"{worker}@{self.name}"
            if worker in self.concurrency:
                argv[argv.index("--concurrency") + 1] = str(self.concurrency[worker])
            self.procs.append(process.spawn(argv, name=f"{self.name}-{worker}", log_file=self.log, env=self.env))

    def hostnames(self) -> list[str]:
        from protostar import commands

        return [f"{worker}@{self.name}" for worker in commands.WORKERS]

    def ready(self, timeout: float = 120.0) -> bool:
        """Whether every worker of the node answers a ping within ``timeout``."""
        from protostar.jobs.broker import create_celery

        app = create_celery(self.settings, role="api")
        deadline = time.monotonic() + timeout
        want = set(self.hostnames())
        while time.monotonic() < deadline:
            try:
                answered = {name for reply in app.control.ping(destination=list(want), timeout=1.0) for name in reply}
            except Exception:
                answered = set()
            if want <= answered:
                return True
            time.sleep(0.5)
        return False

    def pids(self) -> list[int]:
        pids: list[int] = []
        for proc in self.procs:
            try:
                parent = psutil.Process(proc.pid)
                pids += [proc.pid, *[c.pid for c in parent.children(recursive=True)]]
            except psutil.NoSuchProcess:
                pass
        return pids

    def kill(self) -> int:
        """SIGKILL every process of the node at once (a host that lost power); how many there were."""
        pids = self.pids()
        for pid in pids:
            kill(pid)
        for proc in self.procs:
            proc.wait(timeout=10)
        return len(pids)
