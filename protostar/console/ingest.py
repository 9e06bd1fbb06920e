"""``protostar ingest PATH…``: upload files (folders recursively), follow each ingestion's events with a bar per
file (stage and done/total), then a table; exit 1 if any file failed. Runs on the async client, a few files
at a time, so every file's events are followed at once."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from protostar.client import AsyncClient, ClientError
from protostar.console.connect import ApiKey, ApiUrl, Json, connect_async
from protostar.console.output import emit_json, err, out, table

OK = frozenset({"ready", "queued", "processing"})  # queued/processing: only with --no-wait


@dataclass
class Outcome:
    path: str
    status: str  # the document's status (ready, failed, queued, processing), or "error" if the upload failed
    document_id: str | None = None
    job_id: str | None = None
    duplicate: bool = False
    chunks: int | None = None
    pages: int | None = None
    error: str | None = None


def collect(paths: list[Path]) -> list[Path]:
    """Files as given, and every file under a folder (recursively, hidden ones left out), each once."""
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                hidden = any(part.startswith(".") for part in child.relative_to(path).parts)
                if child.is_file() and not hidden:
                    found[child] = None
        elif path.is_file():
            found[path] = None
        else:
            raise typer.BadParameter(f"{path} is not a file or a folder", param_hint="PATH")
    return list(found)


class Run:
    def __init__(self, client: AsyncClient, progress: Progress, *, wait: bool, metadata: dict[str, Any] | None):
        self.client, self.progress, self.wait, self.metadata = client, progress, wait, metadata

    async def one(self, path: Path, task: TaskID, slots: asyncio.Semaphore) -> Outcome:
        async with slots:
            try:
                return await self._ingest(path, task)
            except ClientError as exc:
                self.progress.update(task, stage="error")
                return Outcome(str(path), "error", error=str(exc))

    async def _ingest(self, path: Path, task: TaskID) -> Outcome:
        self.progress.update(task, stage="upload")
        upload = await self.client.upload(path, metadata=self.metadata)
        doc, job_id = upload.document, upload.job_id
        if self.wait and job_id and doc.status not in ("ready", "failed"):
            async for event in self.client.jobs.events(job_id):
                self._show(task, event.type, event.data)
            doc = await self.client.documents.get(doc.id)
        self.progress.update(task, stage=doc.status, total=1, completed=1)
        return Outcome(
            str(path), doc.status, doc.id, job_id, upload.duplicate, doc.chunk_count, doc.page_count, doc.error
        )

    def _show(self, task: TaskID, kind: str, data: dict[str, Any]) -> None:
        if kind == "progress":
            self.progress.update(
                task, stage=data.get("stage"), completed=data.get("done") or 0, total=data.get("total")
            )
        elif kind == "status":
            self.progress.update(task, stage=data.get("status"))


async def _run(files: list[Path], client: AsyncClient, *, wait: bool, metadata: Any, parallel: int) -> list[Outcome]:
    columns = (
        TextColumn("{task.description}"),
        TextColumn("[cyan]{task.fields[stage]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    # Bars only on a terminal: in a pipe the table at the end is the output.
    with Progress(*columns, console=err, disable=not err.is_terminal) as progress:
        run = Run(client, progress, wait=wait, metadata=metadata)
        slots = asyncio.Semaphore(parallel)
        tasks = [progress.add_task(f.name, total=None, stage="waiting") for f in files]
        async with client:
            return list(await asyncio.gather(*(run.one(f, t, slots) for f, t in zip(files, tasks, strict=True))))


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="files and folders (recursively)", show_default=False)],
    no_wait: Annotated[bool, typer.Option("--no-wait", help="upload and return; do not follow the ingestion")] = False,
    metadata: Annotated[str | None, typer.Option(help="a JSON object stored with every document")] = None,
    parallel: Annotated[int, typer.Option(min=1, max=32, help="files in flight at once")] = 4,
    json_: Json = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Upload documents and follow their ingestion; exit 1 if any failed."""
    files = collect(paths)
    meta = _metadata(metadata)
    outcomes = asyncio.run(
        _run(files, connect_async(api_url, api_key), wait=not no_wait, metadata=meta, parallel=parallel)
    )
    failed = [o for o in outcomes if o.status not in OK]
    if json_:
        emit_json([asdict(o) for o in outcomes])
    else:
        rows = [
            (o.path, o.status + (" (duplicate)" if o.duplicate else ""), o.chunks, o.pages, o.document_id, o.error)
            for o in outcomes
        ]
        out.print(table(None, ("file", "status", "chunks", "pages", "document", "error"), rows))
        out.print(
            f"{len(outcomes) - len(failed)} of {len(outcomes)} ok" + (f", {len(failed)} failed" if failed else "")
        )
    if failed:
        raise typer.Exit(1)


def _metadata(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--metadata") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--metadata")
    return value
