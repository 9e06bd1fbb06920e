"""``protostar ask`` (one question, its answer streamed, then its sources) and ``protostar chat`` (a session).

Sources with file and page: a chat result names each source's file and page (and whether the answer cites it).
From an older server, which names each source by document and chunk only: the answer's chunks were retrieved for
the question, so one search for the same question (top 50) finds them with their file and page; a source it does
not find (the ranking moved) is named by its document's file, without a page.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated

import typer
from rich.markup import escape

from protostar.client import Answer, ChatStream, Client, ClientError, NotFound, Reset
from protostar.console.connect import ApiKey, ApiUrl, Json, connect
from protostar.console.output import emit_json, err, out, place

SOURCE_SEARCH_TOP_K = 50


@dataclass(frozen=True)
class Cited:
    n: int | None
    document_id: str
    chunk_id: int
    score: float
    filename: str | None
    page: int | None
    cited: bool | None = None  # whether the answer cites it (None from an older server)


def cite(client: Client, question: str, answer: Answer) -> list[Cited]:
    """The answer's sources with their file and page (see the module's docstring)."""
    if not answer.sources:
        return []
    ordered = sorted(answer.sources, key=lambda s: (s.n is None, s.n or 0))
    if all(s.filename is not None for s in ordered):
        return [Cited(s.n, s.document_id, s.chunk_id, s.score, s.filename, s.page, s.cited) for s in ordered]
    hits = {(h.document_id, h.chunk_id): h for h in client.search(question, top_k=SOURCE_SEARCH_TOP_K)}
    names: dict[str, str | None] = {h.document_id: h.filename for h in hits.values()}
    cited = []
    for s in ordered:
        hit = hits.get((s.document_id, s.chunk_id))
        if s.document_id not in names:
            try:
                names[s.document_id] = client.documents.get(s.document_id).filename
            except NotFound:
                names[s.document_id] = None  # removed since
        page = hit.page if hit else None
        cited.append(Cited(s.n, s.document_id, s.chunk_id, s.score, names[s.document_id], page))
    return cited


def stream_answer(stream: ChatStream) -> None:
    """Print the tokens as they come; a redelivered answer starts over on a new line."""
    for piece in stream:
        if isinstance(piece, Reset):
            out.print(f"\n[yellow]… the answer starts over (attempt {piece.attempt})[/]")
        else:
            out.print(piece, end="", soft_wrap=True, markup=False)
    out.print()


def show_sources(cited: list[Cited]) -> None:
    if not cited:
        return
    out.print("\n[bold]Sources[/]")
    for i, c in enumerate(cited, 1):
        where = place(c.filename, c.page) if c.filename else f"document {c.document_id} (removed)"
        out.print(f"  [{c.n if c.n is not None else i}] {escape(where)}  [dim]score {c.score:.3f}[/]")


def _answer_quietly(stream: ChatStream) -> None:
    for _ in stream:
        pass


def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    session: Annotated[str | None, typer.Option(help="ask in this session (default: a new one)")] = None,
    json_: Json = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Ask about your documents: the answer streams as it is generated, then its sources (file and page)."""
    with connect(api_url, api_key) as client:
        session_id = session or client.sessions.create(title=question[:200])
        stream = client.chat(session_id, question)
        try:
            _answer_quietly(stream) if json_ else stream_answer(stream)
        except KeyboardInterrupt:
            stream.cancel()
            err.print("cancelled")
            raise typer.Exit(130) from None
        answer = stream.answer()
        cited = cite(client, question, answer)
    if json_:
        body = {"session_id": session_id, "job_id": answer.job_id, "message_id": answer.message_id}
        emit_json({**body, "answer": answer.text, "sources": [asdict(c) for c in cited], "usage": answer.usage})
    else:
        show_sources(cited)


def chat(
    title: Annotated[str | None, typer.Option(help="the new session's title")] = None,
    session: Annotated[str | None, typer.Option(help="go on with this session")] = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """An interactive chat session: type a message, read the answer as it comes. /exit or Ctrl-D leaves."""
    with connect(api_url, api_key) as client:
        session_id = session or client.sessions.create(title=title or "protostar chat")
        err.print(f"[dim]session {session_id}; /exit or Ctrl-D to leave, Ctrl-C stops an answer[/]")
        while True:
            try:
                text = out.input("[bold cyan]you>[/] ").strip()
            except (EOFError, KeyboardInterrupt):
                out.print()
                return
            if text in ("/exit", "/quit"):
                return
            if text:
                _turn(client, session_id, text)


def _turn(client: Client, session_id: str, text: str) -> None:
    stream = client.chat(session_id, text)
    out.print("[bold magenta]protostar>[/] ", end="")
    try:
        stream_answer(stream)
        show_sources(cite(client, text, stream.answer()))
    except KeyboardInterrupt:
        stream.cancel()
        out.print("\n[yellow]stopped[/]")
    except ClientError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
