"""Phase 2, enqueue-to-start latency, one at a time and alternating: POST /v1/probes → the job's
``started_at`` (and the ``running`` event on its Redis stream) against bare ``send_task("bench.stamp")`` →
the ``time.time()`` its body pushes to Redis."""

from __future__ import annotations

import json
import time

from bench.common import Row, pct
from bench.dispatch.rawhttp import RawHttp
from bench.dispatch.rig import BARE_QUEUE, BENCH_HOST, RUN_QUEUE, Rig

WARM = 20  # rounds before the samples count

# job id -> (POST sent, POST answered, `running` seen), all time.time()
Sent = dict[str, tuple[float, float, float]]


def run(rig: Rig) -> None:
    sent, bare, bare_seen = sample(rig, rig.args.samples)
    report(rig, job_times(rig, sent), bare, bare_seen)


def sample(rig: Rig, n: int) -> tuple[Sent, list[float], list[float]]:
    """``n`` rounds (after :data:`WARM`) of a probe through the API, then a bare stamp task; answers the probes'
    times, and the stamps' send → body and send → seen (ms)."""
    http = RawHttp(BENCH_HOST, rig.settings.api_port)
    auth = {"Authorization": f"Bearer {rig.load_keys()[0]}"}  # an ordinary key, as a caller's
    body = json.dumps({"queue": RUN_QUEUE, "steps": 1}).encode()
    sent: Sent = {}
    bare, bare_seen = [], []
    try:
        for i in range(n + WARM):
            # Protostar: POST, then follow the job's event stream in Redis until done.
            t0 = time.time()
            status, data = http.request("POST", "/v1/probes", auth, body)
            t_resp = time.time()
            assert status == 202, data
            job_id = json.loads(data)["job_id"]
            t_run = follow(rig, job_id)
            if i >= WARM:
                sent[job_id] = (t0, t_resp, t_run)
            # Bare Celery: send, then wait for the body's own time.time().
            key = f"bench:stamp:{i}"
            t0 = time.time()
            rig.send_like_dispatcher(rig.ctl, "bench.stamp", BARE_QUEUE, args=[key])
            got = rig.redis.blpop([key], timeout=30)
            t_seen = time.time()
            if got is None:
                raise RuntimeError("bench.stamp did not run within 30 s")
            if i >= WARM:
                bare.append((float(got[1]) - t0) * 1000)
                bare_seen.append((t_seen - t0) * 1000)
    finally:
        http.close()
    return sent, bare, bare_seen


def follow(rig: Rig, job_id: str, timeout: float = 30.0) -> float:
    """Read the job's event stream until ``done``; answer when ``status: running`` was seen."""
    key, last, t_run = f"protostar:events:{job_id}", "0-0", None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = rig.redis.xread({key: last}, block=1000)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id
                kind = fields[b"type"]
                if kind == b"status" and t_run is None and json.loads(fields[b"data"])["status"] == "running":
                    t_run = time.time()
                if kind == b"done":
                    if t_run is None:
                        raise RuntimeError(f"probe {job_id} ended without running: {fields}")
                    return t_run
    raise RuntimeError(f"probe {job_id} did not finish within {timeout} s")


def job_times(rig: Rig, sent: Sent) -> dict[str, list[float]]:
    """The probes' intervals (ms), from the client's clock and the jobs' rows (the database clock)."""
    from sqlalchemy import text

    with rig.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id::text, extract(epoch from created_at), extract(epoch from dispatched_at), "
                "extract(epoch from started_at) FROM jobs WHERE id::text = ANY(:ids)"
            ),
            {"ids": list(sent)},
        ).all()
    names = ("post_start", "created_start", "post_running", "post_rt", "created_disp")
    times: dict[str, list[float]] = {name: [] for name in names}
    for jid, created, dispatched, started in rows:
        t0, t_resp, t_run = sent[jid]
        times["post_start"].append((float(started) - t0) * 1000)
        times["created_start"].append((float(started) - float(created)) * 1000)
        times["post_running"].append((t_run - t0) * 1000)
        times["post_rt"].append((t_resp - t0) * 1000)
        times["created_disp"].append((float(dispatched) - float(created)) * 1000)
    return times


def report(rig: Rig, times: dict[str, list[float]], bare: list[float], bare_seen: list[float]) -> None:
    def p(xs: list[float]) -> str:
        return f"{pct(xs, 0.5):.2f} / {pct(xs, 0.99):.2f}"

    post_start, post_rt, post_running = times["post_start"], times["post_rt"], times["post_running"]
    added = pct(post_start, 0.5) - pct(bare, 0.5)
    rig.rows += [
        Row(
            f"Enqueue→start p50 / p99 (ms), POST /v1/probes → jobs.started_at, n={len(post_start)}",
            p(post_start),
            f"bare send_task → task body {p(bare)}",
            f"+{added:.2f} ms p50",
            "≤ +2 ms",
        ),
        Row("  of which POST round trip (client)", p(post_rt), "", f"{pct(post_rt, 0.5) / pct(bare, 0.5):.1f}x"),
        Row("  jobs.created_at → started_at (DB clock)", p(times["created_start"]), "", ""),
        Row("  jobs.created_at → dispatched_at (DB clock)", p(times["created_disp"]), "", ""),
        Row(
            "POST → `running` event seen by client (XREAD) p50 / p99 (ms)",
            p(post_running),
            f"bare send → stamp seen (BLPOP) {p(bare_seen)}",
            f"+{pct(post_running, 0.5) - pct(bare_seen, 0.5):.2f} ms p50",
        ),
    ]
