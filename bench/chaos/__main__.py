"""Chaos benchmark: faults injected from outside into a running stack under load, and what became of every job.

    .venv/bin/python -m bench.chaos            # >= 50 ingest kills, 6 worker kills, 15 s outages
    .venv/bin/python -m bench.chaos --small    # 10 ingest kills, 2 worker kills, 5 s outages (a few minutes)

Starts its own embedded Redis/PostgreSQL/S3 and LLM (answers capped at ``--max-tokens``) in a temp dir on free
ports, the API, every worker of ``commands.WORKERS`` and beat, as ``protostar up`` runs them, with the
product's default timing settings (heartbeats, reaping, the reconciler's interval). Then, one after the other:

1. **ingest kills**: documents of the test corpus uploaded (a tenant per round, so nothing is a duplicate);
   each pool child of the ingest worker that runs one of them at its first attempt is SIGKILLed, until
   ``--ingest-kills`` kills.
2. **worker kills**: ``--worker-kills`` SIGKILLs of a whole worker process (chat, summary, ingest in turn)
   while questions, summaries and probes are submitted; the supervisor is expected to restart it (if it has
   not after 30 s the benchmark does, and says so).
3. **outages**: under the same load, Redis frozen (SIGSTOP) then killed (SIGKILL), PostgreSQL stopped, the
   object store stopped, the LLM killed, each for ``--outage`` seconds and started again; every request
   sent meanwhile is counted as answered (and how: 202, 503...) or hung (past ``--timeout``).
4. **node kill**: a second worker node (a worker per queue, its own ``--hostname``, sharing Redis and
   PostgreSQL) SIGKILLed whole while it holds jobs.

After each phase, every accepted job (and every job of the phase's tenants, such as summaries the system
queued) is followed in the database for ``--settle`` seconds: succeeded, failed by reason, lost (accepted but
no row, or still queued/running at the end), duplicated (more chunks than an undisturbed ingest of the same
file, more than one answer per question, more than one summary per job). Recovery time: from the end of a
fault (the kill, or the service back) until every job accepted before it has ended.

Results: a markdown table on stdout and in ``bench/results/chaos.md``; process output in
``bench/results/chaos.log``.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos import faults
from bench.common import RESULTS, ROOT, MachineShare, Row, arguments, markdown, pct, publish
from bench.harness import System, bench_env, launched

LOG = RESULTS / "chaos.log"
CORPUS = ROOT / "tests" / "corpus"
FILES = ("norwich-city.txt", "family-day.eml", "stanley-cups.csv", "fake-doc.rtf")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = arguments("chaos", __doc__)
    p.add_argument("--small", action="store_true", help="the small size: 10 ingest kills, 2 worker kills, 5 s outages")
    p.add_argument("--ingest-kills", type=int, default=None, help="SIGKILLs of ingest pool children (default 50)")
    p.add_argument("--worker-kills", type=int, default=None, help="SIGKILLs of whole worker processes (default 6)")
    p.add_argument("--outage", type=float, default=None, help="seconds each dependency stays down (default 15)")
    p.add_argument("--settle", type=float, default=None, help="seconds for jobs to end after a phase (180; small: 90)")
    p.add_argument("--timeout", type=float, default=10.0, help="a request's timeout: past it, a hang")
    p.add_argument("--max-tokens", type=int, default=32, help="longest answer of the LLM")
    p.add_argument("--phases", default="1234", help="which phases to run, e.g. 13")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    small = {"ingest_kills": 10, "worker_kills": 2, "outage": 5.0, "settle": 90.0}
    full = {"ingest_kills": 50, "worker_kills": 6, "outage": 15.0, "settle": 180.0}
    for name, value in (small if args.small else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def chaos_env(data_dir: Path, args: argparse.Namespace) -> dict[str, str]:
    from protostar.runtime.process import free_port

    env = bench_env(data_dir, args.log_level)
    del env["PROTOSTAR_LLM_BASE_URL"]  # empty: the stack starts its llama-server
    return env | {
        "PROTOSTAR_LLM_PORT": str(free_port()),
        "PROTOSTAR_LLM_MAX_TOKENS": str(args.max_tokens),
        "PROTOSTAR_INGEST_CONCURRENCY": "2",
    }


@dataclass
class Phase:
    name: str
    accepted: list[str] = field(default_factory=list)
    out: faults.Outcome | None = None
    recoveries: list[float] = field(default_factory=list)
    unrecovered: int = 0
    outages: list[tuple[str, collections.Counter[str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    faults: int = 0


class Chaos:
    def __init__(self, system: System, args: argparse.Namespace) -> None:
        self.system, self.args = system, args
        self.settings = system.settings
        self.traffic = faults.Traffic(timeout=args.timeout)
        self.load = faults.Workload(self.settings.public_api_url, self.traffic)
        self.expected: dict[str, int] = {}
        self.phases: list[Phase] = []
        self.tenants: list[uuid.UUID] = []

    # processes ---------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return self.system.supervisor.names()

    def pid(self, name: str) -> int | None:
        return self.system.supervisor.pid(name)

    def argv(self, name: str) -> list[str]:
        from protostar import commands

        if name == "api":
            return commands.api(self.settings)
        if name == "beat":
            return commands.beat(self.settings)
        return commands.worker(self.settings, name.removeprefix("worker-"))

    def revive(self, phase: Phase, name: str, old: int | None, timeout: float = 30.0) -> None:
        """Wait for the supervisor to run ``name`` again; start it here (and note it) if it has not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pid(name)
            if pid is not None and pid != old:
                return
            time.sleep(0.2)
        phase.notes.append(f"{name} not restarted by the supervisor within {timeout:.0f} s: the benchmark did")
        self.system.supervisor.start(name, self.argv(name))

    def heal(self, phase: Phase) -> None:
        for service in self.system.stack.services:
            faults.thaw(service.pid)
            if service.pid is None:
                phase.notes.append(f"{service.name} was down after the phase: the benchmark started it")
                service.start(120)
        for name in self.names():
            if self.pid(name) is None:
                self.revive(phase, name, None, timeout=10)

    def tenant(self, prefix: str) -> faults.Tenant:
        t = faults.new_tenant(self.system.engine, prefix)
        self.tenants.append(t.id)
        return t

    # phases ------------------------------------------------------------------------------------------------

    def baseline(self) -> None:
        """Chunks per file of an undisturbed ingest."""
        tenant = self.tenant("chaos-baseline")
        ids = [self.load.upload(tenant, CORPUS / name) for name in FILES]
        out = faults.settle(self.system.engine, [i for i in ids if i], timeout=300)
        from sqlalchemy import text

        with self.system.engine.connect() as conn:
            for job in out.jobs.values():
                filename = conn.execute(
                    text("SELECT filename FROM documents WHERE id::text = :d"), {"d": job["payload"]["document_id"]}
                ).scalar_one()
                self.expected[filename] = int(job["effect"])
        print(f"  baseline chunks per file: {self.expected}", flush=True)

    def settle(self, phase: Phase, fault_ends: list[float], tenants: list[uuid.UUID]) -> None:
        phase.out = faults.settle(
            self.system.engine,
            phase.accepted,
            timeout=self.args.settle,
            expected_chunks=self.expected,
            tenants=tenants,
        )
        for end in fault_ends:
            before = [j for a in self.load.accepted if a.at <= end and (j := a.job_id) in phase.out.jobs]
            sub = faults.Outcome({j: phase.out.jobs[j] for j in before}, before)
            seconds = faults.recovery_seconds(sub, end)
            if seconds is None:
                phase.unrecovered += 1
            else:
                phase.recoveries.append(seconds)
        print(f"  {phase.name}: {phase.out.summary()}", flush=True)

    def mark(self) -> int:
        return len(self.load.accepted)

    def since(self, mark: int) -> list[str]:
        return [a.job_id for a in self.load.accepted[mark:]]

    def running(self, job_ids: list[str], kind: str | None = None, attempts: int | None = None) -> list[dict[str, Any]]:
        return faults.running(self.system.engine, job_ids, kind=kind, attempts=attempts)

    def ingest_kills(self) -> None:
        phase = Phase(f"ingest children SIGKILLed mid-job (target {self.args.ingest_kills})")
        mark, killed, ends, tenants = self.mark(), set(), [], []
        deadline = time.monotonic() + 60 + 20 * self.args.ingest_kills
        while len(killed) < self.args.ingest_kills and time.monotonic() < deadline:
            ids = self.since(mark)
            if not faults.outcome(self.system.engine, ids).stuck:
                tenant = self.tenant("chaos-ingest")
                tenants.append(tenant.id)
                for name in FILES:
                    self.load.upload(tenant, CORPUS / name)
            children = faults.pool_children(self.pid("worker-ingest"))
            for job in self.running(ids, kind="ingest", attempts=1):
                if job["id"] not in killed and job["pid"] in children and faults.kill(job["pid"]):
                    killed.add(job["id"])
                    ends.append(time.time())
            time.sleep(0.1)
        phase.faults = len(killed)
        phase.accepted = self.since(mark)
        self.settle(phase, ends, tenants)
        self.phases.append(phase)

    def pump(self, tenant: faults.Tenant, chats: list[str], uploaders: list[faults.Tenant]) -> faults.Pump:
        uploads = iter([(t, n) for t in uploaders for n in FILES[:2]])
        queues = itertools.cycle(("ingest", "chat", "summary"))
        admin = self.system.admin_key

        def submit(i: int) -> None:
            step = i % 6
            if step in (0, 3):
                self.load.ask(tenant, chats[i % len(chats)], faults.QUESTIONS[i % len(faults.QUESTIONS)])
            elif step == 1:
                up = next(uploads, None)
                if up is not None:
                    self.load.upload(up[0], CORPUS / up[1])
            elif step == 5 and i % 12 == 5:
                self.load.summarize(tenant, chats[i % len(chats)])
            else:
                self.load.probe(admin, next(queues), steps=3, sleep=0.3)

        return faults.Pump(submit, every=0.3)

    def under_load(self, prefix: str, uploads: int) -> tuple[faults.Tenant, list[str], list[faults.Tenant]]:
        tenant = self.tenant(prefix)
        chats = [self.load.session(tenant) for _ in range(4)]
        return tenant, chats, [self.tenant(f"{prefix}-up") for _ in range(uploads)]

    def worker_kills(self) -> None:
        phase = Phase(f"whole worker processes SIGKILLed ({self.args.worker_kills})")
        tenant, chats, uploaders = self.under_load("chaos-workers", 3 * self.args.worker_kills)
        mark, ends = self.mark(), []
        victims = itertools.cycle(("worker-chat", "worker-summary", "worker-ingest"))
        with self.pump(tenant, chats, uploaders):
            for _ in range(self.args.worker_kills):
                time.sleep(5)
                name = next(victims)
                old = self.pid(name)
                if faults.kill(old):
                    phase.faults += 1
                    ends.append(time.time())
                    self.revive(phase, name, old)
            time.sleep(3)
        phase.accepted = self.since(mark)
        self.heal(phase)
        self.settle(phase, ends, [tenant.id, *[u.id for u in uploaders]])
        self.phases.append(phase)

    def outage(self, what: str, down: Any, up: Any) -> None:
        phase = Phase(what)
        tenant, chats, uploaders = self.under_load("chaos-outage", 8)
        mark = self.mark()
        with self.pump(tenant, chats, uploaders):
            time.sleep(3)
            start = time.time()
            try:
                down()
                time.sleep(self.args.outage)
            finally:
                up()
            end = time.time()
            phase.faults = 1
            time.sleep(3)
        phase.outages.append((what, self.traffic.during(start, end)))
        phase.accepted = self.since(mark)
        self.heal(phase)
        self.settle(phase, [end], [tenant.id, *[u.id for u in uploaders]])
        self.phases.append(phase)

    def outages(self) -> None:
        stack = self.system.stack
        redis, postgres, s3, llm = stack.redis, stack.postgres, stack.s3, stack.llm

        def redis_kill() -> None:
            pid = redis.pid
            faults.kill(pid)
            if pid is not None:
                faults.gone(pid)

        def llm_kill() -> None:
            pid = llm.pid
            faults.kill(pid)
            if pid is not None:
                faults.gone(pid)

        self.outage("Redis frozen (SIGSTOP)", lambda: faults.freeze(redis.pid), lambda: faults.thaw(redis.pid))
        self.outage("Redis killed (SIGKILL), restarted", redis_kill, lambda: faults.restart(redis))
        self.outage("PostgreSQL stopped, restarted", postgres.stop, lambda: faults.restart(postgres))
        self.outage("object store stopped, restarted", s3.stop, lambda: faults.restart(s3))
        self.outage("LLM killed (SIGKILL), restarted", llm_kill, lambda: faults.restart(llm))

    def node_kill(self) -> None:
        phase = Phase("second worker node SIGKILLed whole")
        node = faults.Node(
            self.settings, f"chaosnode-{uuid.uuid4().hex[:6]}", dict(os.environ), LOG, concurrency={"ingest": 1}
        )
        tenant, chats, uploaders = self.under_load("chaos-node", 8)
        mark, ends = self.mark(), []
        try:
            node.start()
            if not node.ready(timeout=180):
                phase.notes.append("the second node did not answer a ping within 180 s")
            with self.pump(tenant, chats, uploaders):
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    if [j for j in self.running(self.since(mark)) if j["pid"] in node.pids()]:
                        break
                    time.sleep(0.2)
                else:
                    phase.notes.append("no job ran on the second node within 90 s; killed anyway")
                phase.faults = node.kill()
                ends.append(time.time())
                time.sleep(5)
        finally:
            if any(p.poll() is None for p in node.procs):
                node.kill()
        phase.accepted = self.since(mark)
        self.settle(phase, ends, [tenant.id, *[u.id for u in uploaders]])
        self.phases.append(phase)

    # report ------------------------------------------------------------------------------------------------

    def render(self, elapsed: float, machine: str) -> str:
        rows: list[Row] = []
        total: collections.Counter[str] = collections.Counter()
        failed: collections.Counter[str] = collections.Counter()
        recoveries: list[float] = []
        table = [
            "Per phase (jobs of the phase: accepted ones and those the system queued for its tenants):",
            "",
            "| phase | faults | jobs | succeeded | failed (by reason) | lost / stuck | duplicated | wrong effect | "
            "recovery p50 / p99 (s) | not recovered |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        outages = [
            f"Requests sent during each outage (timeout {self.args.timeout:.0f} s: a hang is one that exceeded it):",
            "",
            "| outage | requests | 2xx | 503 | other 4xx/5xx | connection errors | hangs |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        notes: list[str] = []
        for phase in self.phases:
            out = phase.out
            assert out is not None
            st = out.status
            lost = len(out.lost) + len(out.stuck)
            reasons = ", ".join(f"{n} x {r[:80]}" for r, n in out.failed_by.most_common())
            failures = f"{st['failed']}: {reasons}" if reasons else "0"
            rec = f"{pct(phase.recoveries, 0.5):.1f} / {pct(phase.recoveries, 0.99):.1f}" if phase.recoveries else "—"
            table.append(
                f"| {phase.name} | {phase.faults} | {len(out.jobs) + len(out.lost)} | {st['succeeded']} | "
                f"{failures} | {lost} | {len(out.duplicated)} | {len(out.wrong)} | {rec} | "
                f"{phase.unrecovered} |"
            )
            total.update(
                accepted=len(out.accepted),
                jobs=len(out.jobs) + len(out.lost),
                succeeded=st["succeeded"],
                failed=st["failed"],
                cancelled=st["cancelled"],
                lost=len(out.lost),
                stuck=len(out.stuck),
                duplicated=len(out.duplicated),
                wrong=len(out.wrong),
            )
            failed.update({r.split(":")[0]: n for r, n in out.failed_by.items()})
            recoveries += phase.recoveries
            for what, counts in phase.outages:
                n = sum(counts.values())
                ok = sum(v for k, v in counts.items() if k.startswith("2"))
                others = {k: v for k, v in counts.items() if k[0] in "45" and k != "503"}
                other = f"{sum(others.values())}" + (
                    f" ({', '.join(f'{k}: {v}' for k, v in others.items())})" * bool(others)
                )
                outages.append(
                    f"| {what} | {n} | {ok} | {counts['503']} | {other} | {counts['error']} | {counts['hang']} |"
                )
            notes += [f"{phase.name}: {n}" for n in phase.notes]
        rows += [
            Row("jobs accepted by the API (202)", str(total["accepted"]), "—", "—"),
            Row("jobs followed (with those the system queued)", str(total["jobs"]), "—", "—"),
            Row("succeeded", str(total["succeeded"]), "—", "—", "all"),
            Row(
                "failed, by reason",
                f"{total['failed']} ({', '.join(f'{r} {n}' for r, n in failed.most_common()) or 'none'})",
                "—",
                "—",
                "0 by a transient fault",
            ),
            Row("lost (no row) + stuck (queued/running at the end)", f"{total['lost']} + {total['stuck']}", "—", "—"),
            Row("duplicated effects", str(total["duplicated"]), "—", "—", "0"),
            Row("wrong effects (fewer chunks, no answer...)", str(total["wrong"]), "—", "—", "0"),
            Row(
                "recovery after a fault, p50 / p99",
                f"{pct(recoveries, 0.5):.1f} s / {pct(recoveries, 0.99):.1f} s" if recoveries else "—",
                "—",
                "—",
                "≤ 90 s + run time",
            ),
            Row("hung requests (all phases)", str(sum(c.outcome == "hang" for c in self.traffic.calls)), "—", "—", "0"),
        ]
        run = (
            f"{'--small' if self.args.small else 'full size'}: {self.args.ingest_kills} ingest kills, "
            f"{self.args.worker_kills} worker kills, {self.args.outage:.0f} s outages, settle {self.args.settle:.0f} s"
        )
        return markdown(
            "chaos",
            run,
            elapsed,
            rows,
            extra=[*table, "", *outages],
            notes=[*notes, machine],
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    os.chdir(ROOT)
    print("starting embedded services (with the LLM), the API, every worker and beat...", flush=True)
    with launched(lambda data_dir: chaos_env(data_dir, args), LOG) as system:
        from protostar import commands

        for name in commands.WORKERS:
            system.start_worker(name)
        system.supervisor.start("beat", commands.beat(system.settings))
        system.supervisor.keep_alive()  # as `protostar up` does: what dies is restarted (the services by us)
        for queue in ("ingest", "chat", "summary"):
            with system.client(system.admin_key) as api:
                job_id = api.post("/v1/probes", json={"queue": queue, "steps": 1}).json()["job_id"]
                system.wait(job_id, submitted=time.time(), api=api, timeout=300)
        machine = MachineShare()
        chaos = Chaos(system, args)
        chaos.baseline()
        if "1" in args.phases:
            print("phase 1: ingest kills", flush=True)
            chaos.ingest_kills()
        if "2" in args.phases:
            print("phase 2: worker kills", flush=True)
            chaos.worker_kills()
        if "3" in args.phases:
            print("phase 3: outages", flush=True)
            chaos.outages()
        if "4" in args.phases:
            print("phase 4: second node killed", flush=True)
            chaos.node_kill()
        publish("chaos", chaos.render(time.perf_counter() - started, machine.describe()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
