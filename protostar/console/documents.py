"""``protostar search`` and ``protostar documents ls|show|rm``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from protostar.client import Document
from protostar.console.connect import ApiKey, ApiUrl, Json, connect
from protostar.console.output import emit_json, out, place, size, snippet, table

documents = typer.Typer(help="Your documents: list, show, remove.", no_args_is_help=True)


def search(
    query: Annotated[str, typer.Argument(help="what to look for")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=100, help="how many hits")] = 5,
    collection: Annotated[
        list[str] | None, typer.Option("--collection", "-c", help="only documents in this collection (repeatable)")
    ] = None,
    filter_: Annotated[
        str | None, typer.Option("--filter", "-f", help='a metadata filter as JSON, e.g. \'{"year": {"$gte": 2020}}\'')
    ] = None,
    json_: Json = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Hybrid search (vector and full text) over your documents' chunks."""
    where = _filter(filter_)
    with connect(api_url, api_key) as client:
        hits = client.search(query, top_k=top_k, collection_ids=collection or None, filter=where)
    if json_:
        emit_json([h.raw for h in hits])
        return
    if not hits:
        out.print("no hits")
        return
    rows = [(i, h.score, place(h.filename, h.page), snippet(h.text)) for i, h in enumerate(hits, 1)]
    out.print(table(None, ("#", "score", "file", "text"), rows))


def _filter(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc.msg}", param_hint="--filter") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter("a JSON object", param_hint="--filter")
    return value


@documents.command("ls")
def list_documents(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="at most this many (newest first)")] = 20,
    all_: Annotated[bool, typer.Option("--all", "-a", help="every document, page after page")] = False,
    json_: Json = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """List documents, newest first."""
    with connect(api_url, api_key) as client:
        docs = list(client.documents.iterate()) if all_ else client.documents.list(limit=min(limit, 100)).items
    if json_:
        emit_json([d.raw for d in docs])
        return
    out.print(table(None, ("id", "file", "status", "chunks", "pages", "size", "created"), [_row(d) for d in docs]))


def _row(d: Document) -> tuple[object, ...]:
    status = f"{d.status}: {d.error}" if d.error else d.status
    return (d.id, d.filename, status, d.chunk_count, d.page_count, size(d.size), d.created_at)


@documents.command("show")
def show_document(
    document_id: Annotated[str, typer.Argument(help="the document's id")],
    json_: Json = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """One document, with its summary once one was made."""
    with connect(api_url, api_key) as client:
        doc = client.documents.get(document_id)
    if json_:
        emit_json(doc.raw)
        return
    fields = [
        ("id", doc.id),
        ("file", doc.filename),
        ("type", doc.content_type),
        ("size", size(doc.size)),
        ("status", doc.status),
        ("error", doc.error),
        ("chunks", doc.chunk_count),
        ("pages", doc.page_count),
        ("job", doc.job_id),
        ("created", doc.created_at),
        ("summary", doc.summary),
    ]
    out.print(table(None, ("field", "value"), fields))


@documents.command("rm")
def remove_documents(
    document_ids: Annotated[list[str], typer.Argument(help="the ids of the documents to remove")],
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Remove documents: the stored file, its chunks and its row (a running ingestion of it stops)."""
    with connect(api_url, api_key) as client:
        for document_id in document_ids:
            client.documents.delete(document_id)
            out.print(f"removed {document_id}")
