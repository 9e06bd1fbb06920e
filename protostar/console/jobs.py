"""``protostar jobs ls|show|watch|cancel|retry``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from protostar.client import Event, Job
from protostar.console.connect import ApiKey, ApiUrl, Json, connect
from protostar.console.output import emit_json, emit_json_line, out, table

jobs = typer.Typer(help="Jobs: list, show, watch, cancel, retry.", no_args_is_help=True)

JobId = Annotated[str, typer.Argument(help="the job's id")]


def _progress(job: Job) -> str:
    p = job.progress
    if p.stage is None:
        return "-"
    return f"{p.stage} {p.done}/{p.total if p.total is not None else '?'}"


def _error(job: Job) -> str | None:
    return f"{job.error_code}: {job.error_message or ''}".rstrip(": ") if job.error_code else None


@jobs.command("ls")
def list_jobs(
    kind: Annotated[str | None, typer.Option(help="only this kind (ingest, chat, summary_session, ...)")] = None,
    status: Annotated[str | None, typer.Option(help="only this status (queued, running, failed, ...)")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=100, help="at most this many")] = 20,
    cursor: Annotated[str | None, typer.Option(help="the next_cursor of a previous page")] = None,
    json_: Json = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """List jobs, newest first (needs a server with GET /v1/jobs)."""
    with connect(api_url, api_key) as client:
        page = client.jobs.list(kind=kind, status=status, cursor=cursor, limit=limit)
    if json_:
        emit_json({"items": [j.raw for j in page.items], "next_cursor": page.next_cursor})
        return
    rows = [(j.id, j.kind, j.status, _progress(j), j.attempts, j.created_at, _error(j)) for j in page.items]
    out.print(table(None, ("id", "kind", "status", "progress", "attempts", "created", "error"), rows))
    if page.next_cursor:
        out.print(f"more: --cursor {page.next_cursor}")


@jobs.command("show")
def show_job(job_id: JobId, json_: Json = False, api_url: ApiUrl = None, api_key: ApiKey = None) -> None:
    """One job: status, progress, attempts, error and result."""
    with connect(api_url, api_key) as client:
        job = client.jobs.get(job_id)
    if json_:
        emit_json(job.raw)
        return
    _show(job)


def _show(job: Job) -> None:
    fields = [
        ("id", job.id),
        ("kind", job.kind),
        ("status", job.status),
        ("progress", _progress(job)),
        ("attempts", job.attempts),
        ("error", _error(job)),
        ("created", job.created_at),
        ("started", job.started_at),
        ("finished", job.finished_at),
    ]
    if job.result is not None:
        fields += [(f"result.{k}", v) for k, v in job.result.items() if not isinstance(v, dict | list)]
    out.print(table(None, ("field", "value"), fields))


@jobs.command("watch")
def watch_job(job_id: JobId, json_: Json = False, api_url: ApiUrl = None, api_key: ApiKey = None) -> None:
    """Follow a job's events until it ends (tokens as text); exit 1 unless it succeeded."""
    with connect(api_url, api_key) as client:
        in_text = False
        for event in client.jobs.events(job_id):
            if json_:
                emit_json_line({"id": event.id, "event": event.type, "data": event.data})
            elif event.type == "token":
                out.print(str(event.data.get("text", "")), end="", soft_wrap=True, markup=False)
                in_text = True
            else:
                if in_text:
                    out.print()
                    in_text = False
                out.print(_describe(event))
        job = client.jobs.get(job_id)
    if job.status != "succeeded":
        raise typer.Exit(1)


def _describe(event: Event) -> str:
    d = event.data
    if event.type == "progress":
        total = d.get("total")
        return f"progress  {d.get('stage')} {d.get('done')}/{total if total is not None else '?'}"
    if event.type == "status":
        extra = "".join(f" {k}={v}" for k, v in d.items() if k != "status")
        return f"status    {d.get('status')}{escape(extra)}"
    if event.type == "error":
        return f"[red]error[/]     {escape(str(d.get('code')))}: {escape(str(d.get('message') or ''))}"
    if event.type == "sources":  # the file and page of each, not the chunk's text
        named = [_source(s) for s in d.get("sources") or [] if isinstance(s, dict)]
        return "sources   " + escape("; ".join(named))
    return f"{event.type:<9} {escape(str(d))}"


def _source(source: dict[str, Any]) -> str:
    where = f", {source.get('page_kind') or 'page'} {source['page']}" if source.get("page") else ""
    return f"[{source.get('n')}] {source.get('filename')}{where}"


@jobs.command("cancel")
def cancel_jobs(
    job_ids: Annotated[list[str], typer.Argument(help="the ids of the jobs to cancel")],
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Cancel queued or running jobs (a running one stops at its next checkpoint)."""
    with connect(api_url, api_key) as client:
        for job_id in job_ids:
            job = client.jobs.cancel(job_id)
            out.print(f"{job.id} {job.status}")


@jobs.command("retry")
def retry_job(job_id: JobId, json_: Json = False, api_url: ApiUrl = None, api_key: ApiKey = None) -> None:
    """Run a failed or cancelled job again (needs a server with POST /v1/jobs/{id}/retry)."""
    with connect(api_url, api_key) as client:
        job = client.jobs.retry(job_id)
    if json_:
        emit_json(job.raw)
    else:
        out.print(f"{job.id} {job.status}")
