"""Phase ``x``: the answer's knobs, tried without restarting anything. Each question's hybrid hits are fetched
once (``POST /v1/search``, top 5); each variant builds a prompt from the first ``k`` of them in its style and
asks llama-server directly at its temperature. The share of answers that state the fact, per variant, next to
the same variant given the gold passage alone (its ceiling).

Styles:

- ``system``: Protostar's prompt as it was (``protostar.chat.prompt.build``): instructions and numbered sources
  in the system message, the question as the user's;
- ``user``: a short system message; the numbered sources and then the question in the user's message, with
  the instruction to answer in one sentence from the sources — the order a small model reads best: the
  question last, right before its answer;
- ``bare``: no system message; the user's message holds the sources, the question and the instruction;
- ``trim``: as ``system``, each source cut to the two sentences that share the most words with the question
  (tables and lists, with too few sentences, kept whole).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from bench.harness import System
from bench.quality.answers import judge
from bench.quality.corpus import Question

SHORT_SYSTEM = "You answer questions from the sources you are given. Cite each fact's source by its number, like [1]."
ASK = "Answer the question in one short sentence, using only the sources above, and cite the source number."


@dataclass(frozen=True)
class Variant:
    style: str
    k: int
    temperature: float | None  # None: llama-server's default (0.8), as Protostar sent before

    @property
    def label(self) -> str:
        t = "default" if self.temperature is None else f"{self.temperature:g}"
        return f"{self.style}, k={self.k}, temperature {t}"


VARIANTS = (
    Variant("system", 4, None),
    Variant("system", 4, 0.0),
    Variant("system", 3, 0.0),
    Variant("system", 2, 0.0),
    Variant("system", 1, 0.0),
    Variant("user", 4, 0.0),
    Variant("user", 2, 0.0),
    Variant("user", 1, 0.0),
    Variant("bare", 2, 0.0),
    Variant("trim", 4, 0.0),
    Variant("trim", 2, 0.0),
)


def messages(style: str, question: str, sources: list[tuple[str, str]]) -> list[dict[str, str]]:
    """``sources``: (where, text) pairs, numbered from 1 in order."""
    from protostar.chat import prompt
    from protostar.search import Hit

    if style in ("system", "trim"):
        if style == "trim":
            sources = [(where, focus(question, text)) for where, text in sources]
        hits = [Hit(uuid.uuid4(), 0, text, 1.0, None, where) for where, text in sources]
        return list(prompt.build(question=question, hits=hits, history=[], budget=1500).messages)
    listed = "\n\n".join(f"[{n}] ({where})\n{text}" for n, (where, text) in enumerate(sources, start=1))
    user = f"Sources:\n{listed}\n\nQuestion: {question}\n{ASK}"
    if style == "user":
        return [{"role": "system", "content": SHORT_SYSTEM}, {"role": "user", "content": user}]
    return [{"role": "user", "content": user}]


_WORDS = re.compile(r"\w+")
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "by",
        "with",
        "from",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "which",
        "what",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "how",
        "many",
        "much",
        "does",
        "do",
        "did",
        "its",
        "it",
        "this",
        "that",
        "these",
        "those",
        "there",
        "their",
        "his",
        "her",
        "as",
        "into",
        "than",
        "then",
    ]
)
FOCUS_SENTENCES = 2


def focus(question: str, text: str) -> str:
    """The ``FOCUS_SENTENCES`` sentences of ``text`` sharing the most words with the question, in their order."""
    wanted = {w for w in _WORDS.findall(question.casefold()) if w not in _STOP}
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    if len(sentences) <= FOCUS_SENTENCES + 1:  # a table's rows, a list: kept whole
        return text
    scored = sorted(
        range(len(sentences)),
        key=lambda i: -len(wanted & {w for w in _WORDS.findall(sentences[i].casefold())}),
    )
    keep = sorted(scored[:FOCUS_SENTENCES])
    return " ".join(sentences[i].strip() for i in keep)


class Asker:
    def __init__(self, base_url: str, api_key: str, model: str, max_tokens: int) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.max_tokens = model, max_tokens
        self.http = httpx.Client(headers={"Authorization": f"Bearer {api_key}"}, timeout=httpx.Timeout(300, connect=5))

    def ask(self, msgs: list[dict[str, str]], temperature: float | None) -> str:
        body: dict[str, Any] = {"model": self.model, "messages": msgs, "max_tokens": self.max_tokens}
        if temperature is not None:
            body["temperature"] = temperature
        for attempt in range(3):
            try:
                response = self.http.post(self.url, content=json.dumps(body))
                response.raise_for_status()
                return str(response.json()["choices"][0]["message"]["content"] or "")
            except (httpx.RemoteProtocolError, httpx.ConnectError):
                if attempt == 2:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")


def chosen(names: str) -> tuple[Variant, ...]:
    """``--variants 2,3,4`` (1-based indexes into VARIANTS); empty: all."""
    if not names:
        return VARIANTS
    return tuple(VARIANTS[int(n) - 1] for n in names.split(","))


def explore(
    system: System, key: str, questions: list[Question], asker: Asker, variants: tuple[Variant, ...] = VARIANTS
) -> dict[str, tuple[float, float]]:
    """Variant label -> (share stated with retrieved sources, share stated with the gold passage)."""
    hits: dict[str, list[tuple[str, str]]] = {}
    with system.client(key) as api:
        for q in questions:
            response = api.post("/v1/search", json={"query": q.question, "top_k": 5})
            response.raise_for_status()
            hits[q.question] = [(h["filename"], h["text"]) for h in response.json()["hits"]]
    out: dict[str, tuple[float, float]] = {}
    for variant in variants:
        retrieved = gold = 0
        for q in questions:
            asked = messages(variant.style, q.question, hits[q.question][: variant.k])
            retrieved += judge(q, asker.ask(asked, variant.temperature))[0]
            golden = messages(variant.style, q.question, [(q.document, q.gold)])
            gold += judge(q, asker.ask(golden, variant.temperature))[0]
        out[variant.label] = (retrieved / len(questions), gold / len(questions))
        print(f"    {variant.label}: {out[variant.label][0]:.2f} (gold {out[variant.label][1]:.2f})", flush=True)
    return out
