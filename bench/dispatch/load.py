"""A minimal HTTP/1.1 keep-alive load generator: raw asyncio streams, so the client costs little CPU.

Run as a separate process by ``bench.dispatch``; its one argument is a JSON spec:

    {"host", "port", "method", "path", "headers": {...}, "body": "..." | null, "conns": 64,
     "warmup": 1.0, "duration": 5.0}            # timed mode: count responses inside the window
    {..., "count": 2000}                         # count mode: send exactly that many, then stop
    {..., "keys": ["ps_...", ...]}               # requests take these keys in turn (each its own tenant)

It prints ``start`` when the measured window opens, ``stop`` when it closes (so the parent can sample
CPU times at those instants), then one JSON line with the results.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any


def _requests(spec: dict[str, Any]) -> list[bytes]:
    """The request's bytes: one per key of ``keys``, else one."""
    return [_request(spec, key) for key in spec.get("keys") or [None]]


def _request(spec: dict[str, Any], key: str | None) -> bytes:
    body = (spec.get("body") or "").encode()
    headers = dict(spec.get("headers") or {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    lines = [f"{spec['method']} {spec['path']} HTTP/1.1", f"Host: {spec['host']}:{spec['port']}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> int:
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    reqs = _requests(spec)
    conns = int(spec.get("conns", 64))
    count = spec.get("count")
    warmup = float(spec.get("warmup", 1.0)) if count is None else 0.0
    duration = float(spec.get("duration", 5.0))
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    state = {"remaining": count, "stop": False, "sent": 0}
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    w_start, w_end = t0 + warmup, t0 + warmup + duration
    measured = 0

    async def conn() -> None:
        nonlocal measured
        reader, writer = await asyncio.open_connection(spec["host"], spec["port"])
        try:
            while not state["stop"]:
                if count is not None:
                    if state["remaining"] <= 0:
                        return
                    state["remaining"] -= 1
                req = reqs[state["sent"] % len(reqs)]
                state["sent"] += 1
                sent = loop.time()
                status = await _one(reader, writer, req)
                done = loop.time()
                if count is not None or w_start <= done < w_end:
                    measured += 1
                    statuses[status] = statuses.get(status, 0) + 1
                    latencies.append(done - sent)
        finally:
            writer.close()

    tasks = [asyncio.create_task(conn()) for _ in range(conns)]
    if count is None:
        await asyncio.sleep(max(0.0, w_start - loop.time()))
        print("start", flush=True)
        await asyncio.sleep(max(0.0, w_end - loop.time()))
        print("stop", flush=True)
        state["stop"] = True
        elapsed = duration
    else:
        print("start", flush=True)
        started = loop.time()
        await asyncio.gather(*tasks)
        elapsed = loop.time() - started
        print("stop", flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")

    return {
        "requests": measured,
        "seconds": elapsed,
        "rps": measured / elapsed if elapsed else 0.0,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "cpu_s": time.process_time(),
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    result = asyncio.run(run(spec))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
