"""The fault suite: faults injected from outside into the session's real stack under load. Each scenario asserts
from the database that every accepted job ended exactly once with the right effect (chunks per document as an
undisturbed ingest of the same file makes, one complete assistant message per question, one summary row per
summary job that had messages, a probe's steps), none lost, none left queued or running, none failed by the
transient fault; and that the product, not the test, restarted what died (``Scenario.notes``).

Sizes are small (a few corpus files, short questions) and every wait has a timeout; nothing asserts a duration.
The same faults at scale, with figures: ``python -m bench.chaos``.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
import redis

from bench.chaos import faults
from protostar.jobs.events import stream_key
from tests.conftest import LOGS, wait_for
from tests.corpus_files import CORPUS
from tests.faults.conftest import FILES, SETTLE, Scenario, pid_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

INGEST_KILLS = 10


def check(s: Scenario, out: faults.Outcome, traffic: faults.Traffic | None = None) -> None:
    problems = out.problems() + s.notes
    if traffic is not None:  # a request past the client's timeout is a hang: the API must answer (503) instead
        problems += [f"hung request: {c}" for c in traffic.calls if c.outcome == "hang"]
    assert not problems, f"{out.summary()}\n" + "\n".join(problems)


def running(s: Scenario, job_ids: list[str], *, kind: str | None = None, attempts: int | None = None) -> list[dict]:
    return faults.running(s.engine, job_ids, kind=kind, attempts=attempts)


def sessions(load: faults.Workload, tenant: faults.Tenant, n: int) -> list[str]:
    return [load.session(tenant) for _ in range(n)]


def test_ingest_children_sigkilled_mid_job(scenario: Scenario, expected_chunks: dict[str, int]) -> None:
    """At least ten SIGKILLs of the ingest worker's pool children, each while one of our jobs runs in it (each
    job killed once at most, so ``max_attempts`` is never what ends it)."""
    s, live = scenario, scenario.live
    load = faults.Workload(live.api_url, faults.Traffic(timeout=30))
    killed: set[str] = set()
    tenants: list[faults.Tenant] = []
    deadline = time.monotonic() + 240
    while len(killed) < INGEST_KILLS and time.monotonic() < deadline:
        if not faults.outcome(s.engine, load.job_ids()).stuck:  # all ended: another round of uploads
            tenant = faults.new_tenant(s.engine, "faults-ingest")
            tenants.append(tenant)
            for name in FILES:
                load.upload(tenant, CORPUS / name)
        children = faults.pool_children(pid_of(live, "worker-ingest"))
        for job in running(s, load.job_ids(), kind="ingest", attempts=1):
            if job["id"] not in killed and job["pid"] in children and faults.kill(job["pid"]):
                killed.add(job["id"])
        time.sleep(0.1)
    assert len(killed) >= INGEST_KILLS, f"only {len(killed)} children killed mid-job"
    out = faults.settle(s.engine, load.job_ids(), timeout=SETTLE, expected_chunks=expected_chunks)
    check(s, out)  # a job killed as it ended may have ended at its first attempt: no assertion on attempts


def test_chat_worker_sigkilled_mid_answer(scenario: Scenario) -> None:
    """The thread-pool chat worker SIGKILLed while answering: the supervisor restarts it and every question
    gets exactly one answer; the summaries asked for meanwhile are written once."""
    s, live = scenario, scenario.live
    load = faults.Workload(live.api_url, faults.Traffic(timeout=30))
    tenant = faults.new_tenant(s.engine, "faults-chat")
    chats = sessions(load, tenant, 4)
    for i, session_id in enumerate(chats):
        assert load.ask(tenant, session_id, faults.QUESTIONS[i % len(faults.QUESTIONS)]) is not None
    wait_for(lambda: running(s, load.job_ids("chat")), timeout=60, what="a chat answer to start")
    time.sleep(0.5)  # tokens are streaming
    old = pid_of(live, "worker-chat")
    assert faults.kill(old)
    for session_id in chats[:2]:
        load.summarize(tenant, session_id)
    s.restarted("worker-chat", old)
    out = faults.settle(s.engine, load.job_ids(), timeout=SETTLE, tenants=[tenant.id])
    check(s, out)


def test_redis_frozen_then_killed_under_submit_load(scenario: Scenario) -> None:
    """Redis SIGSTOPped for 5 s, then SIGKILLed and restarted, while probes and questions are submitted: the
    API answers (202 or 503, never a hang), every accepted job ends once, the workers ride it out."""
    s, live = scenario, scenario.live
    redis = live.stack.redis
    assert redis is not None
    traffic = faults.Traffic(timeout=10)
    load = faults.Workload(live.api_url, traffic)
    tenant = faults.new_tenant(s.engine, "faults-redis")
    chats = sessions(load, tenant, 3)
    queues = ("ingest", "chat", "summary")

    def submit(i: int) -> None:
        if i % 4 == 3:
            load.ask(tenant, chats[i % len(chats)], faults.QUESTIONS[i % len(faults.QUESTIONS)])
        else:
            load.probe(live.admin_key, queues[i % 3], steps=3, sleep=0.3)

    try:
        with faults.Pump(submit, every=0.3):
            time.sleep(2)
            faults.freeze(redis.pid)
            time.sleep(5)
            faults.thaw(redis.pid)
            time.sleep(3)
            pid = redis.pid
            faults.kill(pid)
            assert pid is not None and faults.gone(pid)
            time.sleep(3)
            faults.restart(redis)
            time.sleep(3)
    finally:
        faults.restart(redis)
    s.revive_dead()
    out = faults.settle(s.engine, load.job_ids(), timeout=SETTLE, tenants=[tenant.id])
    check(s, out, traffic)


@pytest.mark.parametrize("service", ["postgres", "s3"])
def test_dependency_stopped_and_restarted_under_load(
    scenario: Scenario, expected_chunks: dict[str, int], service: str
) -> None:
    """PostgreSQL, or the object store, stopped for 5 s and started again while documents, questions and
    probes are submitted: the API answers 503 meanwhile, jobs in flight retry, every accepted job ends once."""
    s, live = scenario, scenario.live
    target = live.stack.postgres if service == "postgres" else live.stack.s3
    assert target is not None
    traffic = faults.Traffic(timeout=10)
    load = faults.Workload(live.api_url, traffic)
    tenant = faults.new_tenant(s.engine, f"faults-{service}")
    chats = sessions(load, tenant, 2)
    uploaders = [faults.new_tenant(s.engine, f"faults-{service}-up") for _ in range(6)]
    uploads = iter([(t, name) for t in uploaders for name in FILES[:2]])

    def submit(i: int) -> None:
        if i % 3 == 0:
            up = next(uploads, None)
            if up is not None:
                load.upload(up[0], CORPUS / up[1])
        elif i % 3 == 1:
            load.ask(tenant, chats[i % 2], faults.QUESTIONS[i % len(faults.QUESTIONS)])
        else:
            load.probe(live.admin_key, "ingest", steps=3, sleep=0.3)

    try:
        with faults.Pump(submit, every=0.4):
            time.sleep(3)
            target.stop()
            time.sleep(5)
            faults.restart(target)
            time.sleep(3)
    finally:
        faults.restart(target)
    s.revive_dead()
    out = faults.settle(s.engine, load.job_ids(), timeout=SETTLE, expected_chunks=expected_chunks, tenants=[tenant.id])
    check(s, out, traffic)


def streaming(client: redis.Redis, job_ids: list[str]) -> bool:
    """Whether one of the chat jobs has streamed a token and not ended (read from its Redis event stream)."""
    for job_id in job_ids:
        kinds = {fields[b"type"] for _, fields in client.xrange(stream_key(job_id))}
        if b"token" in kinds and b"done" not in kinds:
            return True
    return False


def test_llm_killed_mid_stream(scenario: Scenario, client: redis.Redis) -> None:
    """llama-server SIGKILLed while answers stream, started again after 2 s: every question still gets
    exactly one complete answer (the job retries; nothing fails for good)."""
    s, live = scenario, scenario.live
    llm = live.stack.llm
    assert llm is not None
    load = faults.Workload(live.api_url, faults.Traffic(timeout=30))
    tenant = faults.new_tenant(s.engine, "faults-llm")
    try:
        for _ in range(5):  # short answers end fast: ask again until one is caught streaming
            for i, session_id in enumerate(sessions(load, tenant, 4)):
                assert load.ask(tenant, session_id, faults.QUESTIONS[i]) is not None
            try:
                wait_for(lambda: streaming(client, load.job_ids("chat")), timeout=20, every=0.05, what="tokens")
            except AssertionError:
                continue
            pid = llm.pid
            assert faults.kill(pid)
            assert pid is not None and faults.gone(pid)
            time.sleep(2)
            break
        else:
            pytest.fail("no answer was caught streaming in five rounds of questions")
    finally:
        faults.restart(llm)
    s.revive_dead()
    out = faults.settle(s.engine, load.job_ids(), timeout=SETTLE, tenants=[tenant.id])
    check(s, out)


def test_second_worker_node_killed_whole_mid_load(scenario: Scenario, expected_chunks: dict[str, int]) -> None:
    """A second node (a worker for every queue, its own hostname, sharing Redis and PostgreSQL) SIGKILLed whole
    while it holds jobs: what it held runs again elsewhere, once."""
    s, live = scenario, scenario.live
    node = faults.Node(
        live.settings,
        f"faultnode-{uuid.uuid4().hex[:6]}",
        dict(os.environ),
        LOGS / f"faults-node-{os.getpid()}.log",
        concurrency={"ingest": 1},
    )
    load = faults.Workload(live.api_url, faults.Traffic(timeout=30))
    tenant = faults.new_tenant(s.engine, "faults-node")
    try:
        node.start()
        assert node.ready(timeout=120), f"the second node did not answer a ping (log: {node.log})"
        chats = sessions(load, tenant, 3)
        for i, session_id in enumerate(chats):
            load.ask(tenant, session_id, faults.QUESTIONS[i])
        for queue in ("ingest", "chat", "summary") * 3:
            load.probe(live.admin_key, queue, steps=10, sleep=0.3)
        for name in FILES:
            load.upload(faults.new_tenant(s.engine, "faults-node-up"), CORPUS / name)
        wait_for(
            lambda: [j for j in running(s, load.job_ids()) if j["pid"] in node.pids()],
            timeout=90,
            what="a job running on the second node",
        )
        killed = node.kill()
        assert killed >= len(node.procs)
    finally:
        if any(p.poll() is None for p in node.procs):
            node.kill()
    out = faults.settle(s.engine, load.job_ids(), timeout=SETTLE, expected_chunks=expected_chunks, tenants=[tenant.id])
    check(s, out)
