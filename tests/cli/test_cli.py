"""The user CLI as a person or a script runs it: ``protostar …`` as a subprocess against the live system."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from protostar.client import ClientConfig
from tests.conftest import Live
from tests.corpus_files import CORPUS

GOOD = ("norwich-city.txt", "stanley-cups.csv", "family-day.eml")


def protostar(
    *args: str, live: Live | None, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m protostar.cli ARGS`` with the API's URL and key in the environment (none when ``live`` is None)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTOSTAR_")} | {"COLUMNS": "200"}
    if live is not None:
        env |= {"PROTOSTAR_API_URL": live.api_url, "PROTOSTAR_API_KEY": live.admin_key}
    return subprocess.run(
        [sys.executable, "-m", "protostar.cli", *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def ingested(live: Live, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    """A folder of corpus files (one in a subfolder, one hidden) ingested with ``protostar ingest --json``."""
    folder = tmp_path_factory.mktemp("docs")
    (folder / "more").mkdir()
    for name in GOOD:
        shutil.copy(CORPUS / name, folder / name)
    shutil.copy(CORPUS / "README.md", folder / "more" / "corpus-readme.md")
    (folder / ".hidden.txt").write_text("not uploaded")
    done = protostar("ingest", str(folder), "--json", live=live)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_ingest_a_folder_recursively(ingested: list[dict[str, object]]) -> None:
    names = sorted(Path(str(o["path"])).name for o in ingested)
    assert names == sorted([*GOOD, "corpus-readme.md"])
    for outcome in ingested:
        assert outcome["status"] == "ready", outcome
        assert int(outcome["chunks"]) > 0  # type: ignore[call-overload]


def test_ingest_says_which_file_failed_and_exits_1(live: Live, tmp_path: Path) -> None:
    shutil.copy(CORPUS / "password.pdf", tmp_path / "password.pdf")
    (tmp_path / "note.txt").write_text(f"A note about kettles. {uuid.uuid4().hex}")
    done = protostar("ingest", "note.txt", "password.pdf", live=live, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    rows = {line.split()[1]: line for line in done.stdout.splitlines() if line.startswith("│")}
    assert "ready" in rows["note.txt"] and "failed" in rows["password.pdf"], done.stdout
    assert "1 of 2 ok, 1 failed" in done.stdout


def test_ingest_no_wait_then_documents_show_and_rm(live: Live, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text(f"A note about teapots. {uuid.uuid4().hex}")
    done = protostar("ingest", "--no-wait", str(note), "--json", live=live)
    assert done.returncode == 0, done.stderr
    (outcome,) = json.loads(done.stdout)
    assert outcome["status"] in ("queued", "processing", "ready") and outcome["job_id"]
    document_id = outcome["document_id"]

    listed = protostar("documents", "ls", "--all", "--json", live=live)
    assert document_id in {d["id"] for d in json.loads(listed.stdout)}
    shown = protostar("documents", "show", document_id, "--json", live=live)
    assert json.loads(shown.stdout)["filename"] == "note.txt"
    removed = protostar("documents", "rm", document_id, live=live)
    assert removed.returncode == 0 and f"removed {document_id}" in removed.stdout
    gone = protostar("documents", "show", document_id, live=live)
    assert gone.returncode == 1 and "not_found" in gone.stderr


def test_search_finds_the_file_and_page(live: Live, ingested: list[dict[str, object]]) -> None:
    done = protostar("search", "Norwich City football club", "--top-k", "3", "--json", live=live)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert hits and "norwich-city.txt" in {h["filename"] for h in hits}
    table = protostar("search", "Norwich City football club", live=live)
    assert table.returncode == 0 and "norwich-city.txt" in table.stdout


def test_search_takes_a_metadata_filter(live: Live, api: httpx.Client, ingested: list[dict[str, object]]) -> None:
    """Every upload's metadata has its ``kind``: a filter on it keeps only plain-text files; a bad filter is the
    API's 422."""
    done = protostar("search", "Norwich City football club", "-f", '{"kind": "txt"}', "--json", live=live)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert "norwich-city.txt" in {h["filename"] for h in hits}
    kinds = {api.get(f"/v1/documents/{h['document_id']}").json()["metadata"]["kind"] for h in hits}
    assert kinds == {"txt"}
    bad = protostar("search", "Norwich", "-f", '{"kind": {"$like": "t%"}}', live=live)
    assert bad.returncode == 1 and "unknown operator" in bad.stderr
    usage = protostar("search", "Norwich", "-f", "kind=text", live=live)
    assert usage.returncode == 2


def test_ask_streams_the_answer_then_its_sources(
    live: Live, api: httpx.Client, ingested: list[dict[str, object]]
) -> None:
    question = "What is Norwich City?"
    done = protostar("ask", question, "--json", live=live)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    job = api.get(f"/v1/jobs/{body['job_id']}").json()
    assert body["answer"] == job["result"]["answer"]
    assert body["sources"] and all(s["filename"] for s in body["sources"])
    assert {s["chunk_id"] for s in body["sources"]} == {s["chunk_id"] for s in job["result"]["sources"]}

    shown = protostar("ask", question, live=live)
    assert shown.returncode == 0, shown.stderr
    _, _, sources = shown.stdout.rpartition("Sources")
    assert sources, shown.stdout
    names = {Path(str(o["path"])).name for o in ingested}
    assert any(name in sources for name in names), sources


def test_chat_is_an_interactive_session(live: Live, api: httpx.Client, ingested: list[dict[str, object]]) -> None:
    done = protostar("chat", live=live, stdin="What is Norwich City?\n/exit\n")
    assert done.returncode == 0, done.stderr
    session_id = done.stderr.split("session ", 1)[1].split(";")[0]
    messages = api.get(f"/v1/sessions/{session_id}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert " ".join(messages[1]["content"].split()) in " ".join(done.stdout.split())


def test_jobs_show_watch_cancel(live: Live, api: httpx.Client) -> None:
    quick = api.post("/v1/probes", json={"queue": "chat", "steps": 3}).json()["job_id"]
    watched = protostar("jobs", "watch", quick, live=live)
    assert watched.returncode == 0, watched.stderr
    assert "status    running" in watched.stdout and "done" in watched.stdout
    shown = protostar("jobs", "show", quick, "--json", live=live)
    assert json.loads(shown.stdout)["status"] == "succeeded"

    slow = api.post("/v1/probes", json={"queue": "chat", "steps": 1000, "sleep": 0.5}).json()["job_id"]
    cancelled = protostar("jobs", "cancel", slow, live=live)
    assert cancelled.returncode == 0 and slow in cancelled.stdout
    ended = protostar("jobs", "watch", slow, "--json", live=live)
    assert ended.returncode == 1
    last = json.loads(ended.stdout.splitlines()[-1])
    assert last["event"] == "done" and last["data"]["status"] == "cancelled"


def test_jobs_ls_and_retry_work_or_say_the_server_lacks_them(live: Live, api: httpx.Client) -> None:
    listed = protostar("jobs", "ls", "--json", live=live)
    if listed.returncode == 0:
        assert "items" in json.loads(listed.stdout)
    else:
        assert listed.returncode == 1 and "has no GET /v1/jobs" in listed.stderr, listed.stderr
    failed = api.post("/v1/probes", json={"queue": "chat", "steps": 1, "fail": "input"}).json()["job_id"]
    protostar("jobs", "watch", failed, live=live)
    retried = protostar("jobs", "retry", failed, live=live)
    assert retried.returncode == 0 or "has no POST /v1/jobs/{id}/retry" in retried.stderr, retried.stderr


def test_the_cli_finds_the_client_file_that_up_writes(live: Live, tmp_path: Path) -> None:
    ClientConfig(live.api_url, live.admin_key).save(tmp_path / ".protostar" / "client.json")
    assert (tmp_path / ".protostar" / "client.json").stat().st_mode & 0o777 == 0o600
    (tmp_path / "deeper").mkdir()
    done = protostar("documents", "ls", "--json", live=None, cwd=tmp_path / "deeper")
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)


def test_without_an_api_the_cli_says_how_to_get_one(tmp_path: Path) -> None:
    done = protostar("search", "anything", live=None, cwd=tmp_path)
    assert done.returncode == 2
    assert "protostar up" in done.stderr and "PROTOSTAR_API_URL" in done.stderr
