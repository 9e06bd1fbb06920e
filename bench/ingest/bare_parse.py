"""The parsing baseline: bare ``unstructured`` in a warm process of its own, no Protostar code.

    python -m bench.ingest.bare_parse      (started by ``bench.ingest``; a line protocol on stdin/stdout)

Each request is one JSON line on stdin, ``{"path": ...}``; the answer is one line ``@@ {json}`` on stdout with
the seconds ``partition_pdf(filename=path, strategy="fast", languages=["eng"])`` took (the arguments Protostar
passes: ``languages`` skips language detection, which it does not use) and the element count. ``{"stats": 1}``
answers this process's peak RSS (``VmHWM``). The process warms itself on ``sys.argv[1]`` (a PDF) before it
says ``@@ {"ready": true}``: imports and the first partition (spaCy, numba) are not parsing speed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def vm_kb(pid: int | str, field: str) -> int:
    """A ``VmXXX`` line of ``/proc/<pid>/status`` in kB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def answer(payload: dict[str, Any]) -> None:
    sys.stdout.write("@@ " + json.dumps(payload) + "\n")
    sys.stdout.flush()


def main() -> int:
    for var in ("DO_NOT_TRACK", "UNSTRUCTURED_DISABLE_NOTICE", "HF_HUB_OFFLINE"):
        os.environ.setdefault(var, "1")  # as Protostar's parse.warm() sets them: no telemetry, no hub
    from unstructured.partition.pdf import partition_pdf

    def partition(path: str) -> list[Any]:
        return list(partition_pdf(filename=path, strategy="fast", languages=["eng"]))

    partition(sys.argv[1])
    answer({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        if "stats" in request:
            answer({"vmhwm_kb": vm_kb("self", "VmHWM"), "vmrss_kb": vm_kb("self", "VmRSS")})
            continue
        started = time.perf_counter()
        elements = partition(request["path"])
        answer({"seconds": time.perf_counter() - started, "elements": len(elements)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
