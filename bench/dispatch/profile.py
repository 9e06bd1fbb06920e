"""``--profile``: py-spy over the API under submit load (phase 1) and over the probe worker while it drains
(phase 3), outside the measured rounds; raw stacks in ``bench/results/*.folded``, a summary printed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS
from bench.dispatch.rig import PROBE_WORKER, RUN_QUEUE, SUBMIT_QUEUE, Rig


def _pyspy() -> Path | None:
    """The venv's py-spy, else ``$PYSPY``, else one on the PATH."""
    pyspy = Path(sys.executable).with_name("py-spy")
    if pyspy.exists():
        return pyspy
    found = os.environ.get("PYSPY") or shutil.which("py-spy")
    return Path(found) if found else None


def _record(pyspy: Path, pid: int | None, out: Path, *flags: str) -> subprocess.Popen[bytes]:
    """``py-spy record`` of ``pid`` at 250 Hz, GIL holders only, raw (folded) stacks to ``out``."""
    return subprocess.Popen(
        [str(pyspy), "record", "-p", str(pid), *flags, "-r", "250", "-f", "raw", "-o", str(out), "--gil"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def submit(rig: Rig) -> None:
    """py-spy over the API during one more (unmeasured) round of POST /v1/probes."""
    pyspy = _pyspy()
    if pyspy is None:
        rig.notes.append("--profile: py-spy is not installed (.venv/bin/pip install py-spy); skipped")
        return
    out = RESULTS / "api-submit.folded"
    spy = _record(pyspy, rig.pid("api"), out, "-d", str(int(rig.args.duration) + 1))
    try:
        spec = {**rig.probe_spec(SUBMIT_QUEUE), "conns": rig.args.conns, "warmup": 0.5, "duration": rig.args.duration}
        rig.load(spec, ())
    finally:
        spy.wait(timeout=60)
    rig.notes.append(f"py-spy profile of the API under submit load (not a measured round): {out}")
    print(summarize_folded(out), flush=True)


def worker(rig: Rig, n: int = 500) -> None:
    """py-spy over the probe worker and its pool children while ``n`` more probes drain (not measured)."""
    pyspy = _pyspy()
    if pyspy is None:
        return
    marker = rig.db_clock()
    rig.pause(PROBE_WORKER, RUN_QUEUE)
    time.sleep(0.3)
    rig.load({**rig.probe_spec(RUN_QUEUE), "conns": 16, "count": n}, ())
    out = RESULTS / "worker-probe.folded"
    spy = _record(pyspy, rig.pid(f"worker-{PROBE_WORKER}"), out, "--subprocesses")
    time.sleep(1.0)
    rig.resume(PROBE_WORKER, RUN_QUEUE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if rig.run_jobs(marker, "finished_at IS NOT NULL") >= n:
            break
        time.sleep(0.1)
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=60)
    rig.notes.append(f"py-spy profile of the probe worker draining {n} probes (not measured): {out}")
    print(summarize_folded(out), flush=True)


def summarize_folded(path: Path, top: int = 30) -> str:
    """Inclusive share of samples per function (file:function), from py-spy's raw (folded) output."""
    total = 0
    incl: dict[str, int] = {}
    own: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        total += c
        frames = [
            f.rsplit(" (", 1)[0] + " (" + f.rsplit(" (", 1)[1].split(":")[0] + ")" if " (" in f else f
            for f in stack.split(";")
        ]
        for f in set(frames):
            incl[f] = incl.get(f, 0) + c
        own[frames[-1]] = own.get(frames[-1], 0) + c
    out = [f"py-spy: {total} samples; inclusive top {top}:"]
    for f, c in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * c / total:5.1f}%  {f}")
    out.append("self top 15:")
    for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:15]:
        out.append(f"  {100 * c / total:5.1f}%  {f}")
    return "\n".join(out)
