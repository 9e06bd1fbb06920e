"""A job that asks for more memory than a worker may use fails with a reason; the process carries on."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import Engine, text

from protostar.bundle import Clients
from protostar.errors import OutOfMemory
from protostar.jobs.broker import create_celery
from protostar.jobs.context import JobContext
from protostar.worker.shell import run_job
from tests.conftest import Live
from tests.jobs.test_reconcile import make_job


def test_the_cap_turns_a_huge_allocation_into_memory_error_and_the_process_lives_on() -> None:
    script = textwrap.dedent(
        """
        import psutil
        from protostar.worker.limits import cap_address_space, describe
        cap_address_space(psutil.Process().memory_info().vms // 2**20 + 512)
        try:
            bytearray(4 * 2**30)
        except MemoryError:
            print("refused;", describe())
        print("alive", len(bytearray(64 * 2**20)))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert "refused; " in done.stdout and "MiB of address space" in done.stdout
    assert f"alive {64 * 2**20}" in done.stdout


def test_memory_error_in_a_job_fails_it_out_of_memory(live: Live, engine: Engine) -> None:
    job_id = make_job(engine, queue="ingest")
    resources = Clients(live.settings, create_celery(live.settings, role="worker"), role="worker")

    def greedy(ctx: JobContext) -> dict[str, object]:
        raise MemoryError

    try:
        with pytest.raises(OutOfMemory):
            run_job(None, resources, str(job_id), greedy)  # type: ignore[arg-type]  # no retry on this path
    finally:
        resources.close()
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, error_code, error_message FROM jobs WHERE id = :id"), {"id": job_id}
        ).one()
    assert row.status == "failed" and row.error_code == "out_of_memory"
    assert "more memory than a worker may use" in row.error_message
