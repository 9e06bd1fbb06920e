"""The embedded LLM installed and started in the background, as `protostar up` does it: its state in Redis
says ``building`` with the compile's progress while the installer runs (and a chat or summary job queued then
is told why it waits), ``ready`` once llama-server answers, ``failed`` with the reason when the install
fails. The installer here is a stand-in script; Redis and llama-server are real."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from protostar.errors import PortInUse
from protostar.runtime.llm_launch import Launcher
from protostar.runtime.llm_state import KEY, LLMState, clear_state, read_state, waiting_note
from protostar.runtime.process import ensure_port_free, free_port
from protostar.runtime.redis import EmbeddedRedis
from protostar.runtime.stack import Stack
from tests.conftest import wait_for
from tests.runtime.test_llm import only_llm, stream_answer

pytestmark = pytest.mark.slow


@pytest.fixture
def base_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="protostar-launch-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    path = Path(tempfile.mkdtemp(prefix="protostar-launch-redis-"))
    server = EmbeddedRedis(data_dir=path / "redis", port=free_port(), password="pw-" + os.urandom(8).hex())
    server.start()
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()
    server.stop()
    shutil.rmtree(path, ignore_errors=True)


def installer(script: str) -> list[str]:
    return ["/bin/bash", "-c", script]


def test_building_then_ready(base_dir: Path, client: redis.Redis) -> None:
    gate = base_dir / "go"
    script = 'echo "building llama-server from source"; echo "  [ 42%] Built target ggml"; '
    script += f'while [ ! -e "{gate}" ]; do sleep 0.05; done; echo "the embedded LLM is installed"'
    settings = only_llm(base_dir / "data")
    stack = Stack(settings)
    said: list[str] = []
    launcher = Launcher(stack, client, installer=installer(script), say=said.append)
    try:
        stack.start(defer_llm=True)  # as `up` does: the LLM's port is held, nothing else runs here
        with pytest.raises(PortInUse):
            ensure_port_free("127.0.0.1", settings.llm_port, "llm")
        launcher.begin()
        building = wait_for(
            lambda: (state := read_state(client))["progress"] == 42 and state, what="the compile's progress"
        )
        assert building["state"] == "building" and "42%" in building["detail"]
        note = waiting_note(client)
        assert note is not None and note["waiting_for"] == "llm" and note["llm"]["progress"] == 42
        assert "runs when it is ready" in note["message"]
        assert not launcher.poll()
        assert stack.pids() == {}  # no llama-server before the install is done
        assert any("[ 42%] Built target ggml" in line for line in said)  # relayed to the terminal

        gate.touch()
        wait_for(launcher.poll, timeout=120, what="the LLM to become ready")
        assert read_state(client)["state"] == "ready" and launcher.state is LLMState.READY
        assert waiting_note(client) is None
        assert not launcher.poll()  # True only once
        env = stack.env()
        assert stream_answer(env["PROTOSTAR_LLM_BASE_URL"], env["PROTOSTAR_LLM_API_KEY"]).strip()
        assert client.ttl(KEY) > 0  # a stopped `up` leaves no stale state
    finally:
        launcher.stop()
        stack.stop()
    assert stack.pids() == {}


def test_a_failed_install_is_reported(base_dir: Path, client: redis.Redis) -> None:
    stack = Stack(only_llm(base_dir / "data"))
    said: list[str] = []
    launcher = Launcher(
        stack, client, installer=installer('echo "cmake: no compiler found" >&2; exit 3'), say=said.append
    )
    try:
        launcher.begin()
        wait_for(lambda: launcher.poll() or launcher.state is LLMState.FAILED, what="the installer to fail")
    finally:
        launcher.stop()
        stack.stop()
    state = read_state(client)
    assert state["state"] == "failed" and "no compiler found" in state["detail"] and "exit code 3" in state["detail"]
    note = waiting_note(client)
    assert note is not None and note["message"].startswith("the embedded LLM failed")
    assert stack.pids() == {}
    assert any("chat and summary jobs stay queued" in line for line in said)


def test_no_state_means_an_llm_we_do_not_manage(client: redis.Redis) -> None:
    clear_state(client)
    assert read_state(client)["state"] == "unknown"
    assert waiting_note(client) is None  # production: an external LLM, assumed to serve
    client.set(KEY, "not json")
    assert read_state(client)["state"] == "unknown"
    clear_state(client)
