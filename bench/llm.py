"""Shared by the benchmarks that call the LLM (``bench.summary``, ``bench.quality``): the baselines' side of
it, llama-server called directly as the worker calls it, and its own token count of a prompt (the chat template
applied, then tokenized), for prompts too long for its context. Imports nothing of ``bench`` or Protostar."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Completion:
    text: str
    seconds: float
    prompt_tokens: int
    completion_tokens: int


class Direct:
    """llama-server over plain HTTP: the request body ``ChatLLM`` sends (streamed, usage included), with its
    prompt cache off."""

    def __init__(self, base_url: str, api_key: str, model: str) -> None:
        self.base_url, self.model = base_url.rstrip("/"), model
        self.http = httpx.Client(headers={"Authorization": f"Bearer {api_key}"}, timeout=httpx.Timeout(300, connect=5))

    def complete(self, messages: Sequence[dict[str, str]], *, max_tokens: int, exactly: bool = False) -> Completion:
        """One streamed completion; ``exactly``: ``max_tokens`` of them whatever the model would say (llama-server's
        ``ignore_eos``), to compare with a job that generated that many."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if exactly:
            body["ignore_eos"] = True
        # Without this, llama-server would reuse the KV cache of the identical prompt the job has just sent and
        # skip evaluating it: the job's prompt is new to the server, so the baseline's must be too.
        body["cache_prompt"] = False
        for attempt in range(3):
            try:
                return self._stream(body)
            except (httpx.RemoteProtocolError, httpx.ConnectError):
                # llama-server closes idle keep-alive connections after 5 s: the request met a closed one.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _stream(self, body: dict[str, Any]) -> Completion:
        pieces: list[str] = []
        usage: dict[str, Any] = {}
        started = time.perf_counter()
        with self.http.stream("POST", f"{self.base_url}/chat/completions", json=body) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                chunk = json.loads(line[5:])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    pieces.append((choice.get("delta") or {}).get("content") or "")
        seconds = time.perf_counter() - started
        return Completion(
            "".join(pieces), seconds, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        )

    def count(self, messages: Sequence[dict[str, str]]) -> int:
        """Tokens of ``messages`` as llama-server would count them in a chat request (any length)."""
        root = self.base_url.removesuffix("/v1")
        prompt = self.http.post(f"{root}/apply-template", json={"messages": list(messages)})
        prompt.raise_for_status()
        tokens = self.http.post(f"{root}/tokenize", json={"content": prompt.json()["prompt"], "parse_special": True})
        tokens.raise_for_status()
        return len(tokens.json()["tokens"])

    def close(self) -> None:
        self.http.close()
