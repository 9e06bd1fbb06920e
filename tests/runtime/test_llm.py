"""The embedded LLM, started by the project's own code as a real llama-server: it streams chat completions to
the OpenAI client under the model name we hand out, refuses a wrong key, says clearly when its port is
taken, keeps its key out of ``ps`` and never outlives its parent."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import psutil
import pytest
import urllib3

from protostar.errors import PortInUse, ServiceError
from protostar.runtime.llm import DEFAULT_MODEL, EmbeddedLLM, _library_links
from protostar.runtime.process import free_port
from protostar.runtime.stack import Stack
from protostar.settings import Settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROMPT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture
def base_dir() -> Iterator[Path]:
    # Not tmp_path: its parents are 0700, and as root the server runs as a system user that must reach them.
    path = Path(tempfile.mkdtemp(prefix="protostar-llm-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def llm() -> Iterator[EmbeddedLLM]:
    path = Path(tempfile.mkdtemp(prefix="protostar-llm-"))
    path.chmod(0o755)
    service = EmbeddedLLM(data_dir=path / "llm", port=free_port(), api_key="k-" + os.urandom(12).hex())
    service.start()
    yield service
    service.stop()
    shutil.rmtree(path, ignore_errors=True)


def only_llm(data_dir: Path, **overrides: object) -> Settings:
    """Settings that embed only the LLM: the other services are 'external' (and never contacted here)."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "llm_port": free_port(),
        "llm_base_url": None,
        "llm_api_key": None,
        "llm_model": DEFAULT_MODEL,
        "redis_url": "redis://127.0.0.1:1/0",
        "database_url": "postgresql+psycopg://nobody@127.0.0.1:1/nothing",
        "s3_endpoint": "127.0.0.1:1",
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def client(base_url: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)


def stream_answer(base_url: str, api_key: str, model: str = DEFAULT_MODEL) -> str:
    with client(base_url, api_key) as llm_client:
        stream = llm_client.chat.completions.create(
            model=model, messages=PROMPT, max_tokens=24, stream=True, stream_options={"include_usage": True}
        )
        with stream:
            return "".join(choice.delta.content or "" for chunk in stream for choice in chunk.choices)


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    living = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                living.append(proc)
        except psutil.NoSuchProcess:
            pass
    return living


def test_streams_a_chat_completion_through_the_openai_client(llm: EmbeddedLLM) -> None:
    assert llm.base_url == f"http://127.0.0.1:{llm.port}/v1"
    assert stream_answer(llm.base_url, llm.api_key, model="SmolLM2-135M-Instruct").strip()


def test_lists_the_model_under_the_name_we_hand_out(llm: EmbeddedLLM) -> None:
    with client(llm.base_url, llm.api_key) as llm_client:
        assert [model.id for model in llm_client.models.list()] == [DEFAULT_MODEL]


def test_a_wrong_or_missing_api_key_is_refused(llm: EmbeddedLLM) -> None:
    with client(llm.base_url, "wrong-key") as llm_client, pytest.raises(openai.AuthenticationError) as caught:
        llm_client.chat.completions.create(model=DEFAULT_MODEL, messages=PROMPT, max_tokens=4)
    assert caught.value.status_code == 401
    body = json.dumps({"model": DEFAULT_MODEL, "messages": PROMPT, "max_tokens": 4}).encode()
    root = llm.base_url.removesuffix("/v1")
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/metrics")):
        answer = urllib3.request(method, root + path, body=body if method == "POST" else None, retries=False)
        assert answer.status == 401, path


def test_the_key_stays_out_of_the_command_line_and_only_the_host_is_bound(llm: EmbeddedLLM) -> None:
    assert llm.pid is not None
    server = psutil.Process(llm.pid)
    assert llm.api_key not in " ".join(server.cmdline())
    listening = {conn.laddr for conn in server.net_connections(kind="tcp") if conn.status == psutil.CONN_LISTEN}
    assert {(addr.ip, addr.port) for addr in listening} == {("127.0.0.1", llm.port)}
    assert (llm.data_dir / "llama-server.log").stat().st_size > 0


def test_a_busy_port_is_reported_clearly(base_dir: Path) -> None:
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        service = EmbeddedLLM(data_dir=base_dir / "llm", port=port, api_key="key")
        with pytest.raises(PortInUse) as caught:
            service.start()
    assert str(caught.value) == (
        f"port {port} on 127.0.0.1 is already in use, so the embedded llm cannot start; "
        "stop what uses it or set PROTOSTAR_LLM_PORT"
    )
    assert service.pid is None


def test_a_server_that_cannot_start_is_reported_with_its_log(base_dir: Path) -> None:
    broken = base_dir / "broken.gguf"
    broken.write_bytes(b"not a model")
    service = EmbeddedLLM(data_dir=base_dir / "llm", port=free_port(), api_key="key", model_file=broken)
    with pytest.raises(ServiceError, match=r"exited with code") as caught:
        service.start(timeout=30)
    assert "broken.gguf" in str(caught.value)  # the tail of llama-server.log says what went wrong
    service.stop()
    assert service.pid is None


def test_the_stack_embeds_the_llm_and_exports_its_url_and_key(base_dir: Path) -> None:
    settings = only_llm(base_dir / "data")
    with Stack(settings) as stack:
        assert [service.name for service in stack.services] == ["llm"]
        env = stack.env()
        assert set(env) == {"PROTOSTAR_LLM_BASE_URL", "PROTOSTAR_LLM_API_KEY"}
        assert env["PROTOSTAR_LLM_BASE_URL"] == f"http://127.0.0.1:{settings.llm_port}/v1"
        assert stream_answer(env["PROTOSTAR_LLM_BASE_URL"], env["PROTOSTAR_LLM_API_KEY"], settings.llm_model).strip()
    assert Stack(settings).secret("llm_api_key") == env["PROTOSTAR_LLM_API_KEY"]  # kept for the next start


def test_a_configured_llm_is_not_embedded(base_dir: Path) -> None:
    stack = Stack(only_llm(base_dir / "data", llm_base_url="https://llm.example/v1"))
    assert stack.services == []
    assert stack.llm is None
    assert stack.env() == {}


def test_a_configured_key_is_used_by_the_embedded_server(base_dir: Path) -> None:
    stack = Stack(only_llm(base_dir / "data", llm_api_key="chosen-key"))
    assert stack.llm is not None
    assert stack.llm.api_key == "chosen-key"
    assert "llm_api_key" not in stack.secrets


def test_library_links_stand_in_for_the_import_that_makes_them(base_dir: Path) -> None:
    bin_dir, lib_dir = base_dir / "bin", base_dir / "lib"
    bin_dir.mkdir()
    (bin_dir / "libggml.so.0.26.0").write_text("library")
    manifest = {"libggml.so": "libggml.so.0", "libggml.so.0": "libggml.so.0.26.0"}
    (bin_dir / "_symlinks.json").write_text(json.dumps(manifest))
    assert _library_links(bin_dir, lib_dir) == [lib_dir, bin_dir]
    assert (lib_dir / "libggml.so").read_text() == (lib_dir / "libggml.so.0").read_text() == "library"
    (bin_dir / "_symlinks.json").unlink()  # the import ran: the links live beside the libraries
    assert _library_links(bin_dir, lib_dir) == [bin_dir]
    assert not lib_dir.exists()


ORPHAN_SCRIPT = """
import json, sys, time
from pathlib import Path
from protostar.runtime.stack import Stack
from protostar.settings import Settings

settings = Settings(data_dir=Path(sys.argv[1]), llm_port=int(sys.argv[2]), llm_base_url=None, llm_api_key=None,
                    redis_url="redis://127.0.0.1:1/0", database_url="postgresql://nobody@127.0.0.1:1/x",
                    s3_endpoint="127.0.0.1:1")
stack = Stack(settings)
stack.start()
print(json.dumps(stack.pids()), flush=True)
time.sleep(600)
"""


def test_killing_the_parent_leaves_no_orphan(base_dir: Path) -> None:
    with (base_dir / "parent.log").open("wb") as log:
        parent = subprocess.Popen(
            [sys.executable, "-c", ORPHAN_SCRIPT, str(base_dir / "data"), str(free_port())],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], 60)
        line = parent.stdout.readline() if ready else b""
        assert line, f"the LLM did not start: {(base_dir / 'parent.log').read_text()[-2000:]}"
        pids = json.loads(line)
        assert set(pids) == {"llm"}
        server = psutil.Process(pids["llm"])
        assert server.ppid() == parent.pid
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 15
    while alive([server]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive([server]) == []
