"""The OpenAI-compatible endpoint with the ``openai`` client, unchanged, on the live system and the real local
model: an answer with usage, a stream of deltas that ends, the models list, 4xx as the client's exceptions, and a
caller that leaves mid-stream cancelling the job."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

import httpx
import openai
import pytest

from tests.api.test_auth import create_key
from tests.api.test_jobs import submit, wait_status
from tests.conftest import Live, wait_for
from tests.ingest.test_documents_api import upload

FACT = "The Vellmoor glass regatta is sailed on Lake Oskarn every year on the second Sunday of June."
SHORT = 24  # tokens: the real model is slow on a loaded machine


@pytest.fixture(scope="module")
def key(live: Live) -> str:
    return create_key(f"openai-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def api_key(live: Live, key: str) -> Iterator[httpx.Client]:
    with live.client(key) as client:
        yield client


@pytest.fixture(scope="module")
def oai(live: Live, key: str) -> openai.OpenAI:
    # No retries: a retried request would queue a second job.
    return openai.OpenAI(base_url=f"{live.api_url}/v1", api_key=key, max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def model(oai: openai.OpenAI) -> str:
    return oai.models.list().data[0].id


@pytest.fixture(scope="module")
def document_id(api_key: httpx.Client) -> str:
    body = (FACT + "\n\n" + "Lake Oskarn lies in a quiet valley with one ferry and two inns. " * 5).encode()
    response = upload(api_key, "vellmoor.txt", body + uuid.uuid4().hex.encode())
    assert response.status_code == 202, response.text
    wait_status(api_key, response.json()["job_id"], "succeeded", timeout=120)
    return str(response.json()["document_id"])


def job_of(completion_id: str) -> str:
    assert completion_id.startswith("chatcmpl-"), completion_id
    return str(uuid.UUID(completion_id.removeprefix("chatcmpl-")))


def test_models_list_names_the_chat_model(oai: openai.OpenAI, live: Live) -> None:
    models = oai.models.list().data
    assert [m.id for m in models] == [live.settings.llm_model]
    assert models[0].object == "model" and models[0].owned_by
    assert oai.models.retrieve(live.settings.llm_model).id == live.settings.llm_model
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")


def test_an_answer_has_content_usage_and_its_chat_job(
    oai: openai.OpenAI, model: str, api_key: httpx.Client, document_id: str
) -> None:
    completion = oai.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "When is the Vellmoor glass regatta sailed?"},
        ],
        max_tokens=SHORT,
        temperature=0.2,  # accepted, and the operator's settings apply
    )
    assert completion.object == "chat.completion" and completion.model == model
    choice = completion.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    # It ran as a chat job (the chat queue): the same row, result and accounting as a session's message.
    job = api_key.get(f"/v1/jobs/{job_of(completion.id)}").json()
    assert job["kind"] == "chat" and job["status"] == "succeeded", job
    assert job["result"]["answer"] == choice.message.content
    assert job["result"]["usage"]["completion_tokens"] == completion.usage.completion_tokens
    extra = completion.model_extra or {}
    assert extra["job_id"] == job["id"]
    assert any(s["document_id"] == document_id for s in extra["sources"]), extra["sources"]


def test_a_stream_yields_deltas_then_usage_and_ends(
    oai: openai.OpenAI, model: str, api_key: httpx.Client, document_id: str
) -> None:
    stream = oai.chat.completions.create(
        model=model,
        messages=[
            {"role": "user", "content": "Where is the regatta?"},
            {"role": "assistant", "content": "On Lake Oskarn."},
            {"role": "user", "content": "And when is it sailed?"},
        ],
        max_tokens=SHORT,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)  # ends: the client stops at data: [DONE]
    assert all(c.object == "chat.completion.chunk" and c.model == model for c in chunks)
    assert len({c.id for c in chunks}) == 1
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    text = "".join(d.content or "" for d in deltas)
    assert sum(1 for d in deltas if d.content) > 1 and text.strip()
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing in (["stop"], ["length"]), finishing
    assert not chunks[-1].choices and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    job = api_key.get(f"/v1/jobs/{job_of(chunks[0].id)}").json()
    assert job["status"] == "succeeded" and job["result"]["answer"] == text
    assert job["result"]["history_used"] == 2  # the earlier turns were its history


def test_bad_requests_raise_the_clients_exceptions(oai: openai.OpenAI, model: str, live: Live) -> None:
    with pytest.raises(openai.UnprocessableEntityError):
        oai.chat.completions.create(model=model, messages=[])
    with pytest.raises(openai.UnprocessableEntityError):  # the last message must be the question
        oai.chat.completions.create(model=model, messages=[{"role": "assistant", "content": "hello"}])
    with pytest.raises(openai.UnprocessableEntityError):
        oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], n=2)
    with pytest.raises(openai.UnprocessableEntityError):  # a body that is not an object
        oai.post(
            "/chat/completions", cast_to=object, options={"headers": {"Content-Type": "application/json"}}, body="{"
        )
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    bad = openai.OpenAI(base_url=f"{live.api_url}/v1", api_key="ps_not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_leaving_mid_stream_cancels_the_job(oai: openai.OpenAI, model: str, api_key: httpx.Client) -> None:
    stream = oai.chat.completions.create(
        model=model,
        messages=[
            {"role": "user", "content": "Write a very long story about a lighthouse keeper, with many chapters."}
        ],
        stream=True,  # the operator's longest answer
    )
    seen = []
    for chunk in stream:
        seen.append(chunk)
        if sum(1 for c in seen if c.choices and c.choices[0].delta.content) >= 3:
            break
    stream.close()
    job = wait_status(api_key, job_of(seen[0].id), "cancelled", "succeeded", timeout=30)
    if job["status"] == "succeeded":
        pytest.skip("the model finished its answer before the disconnect arrived")
    assert job["kind"] == "chat"


def test_leaving_before_a_whole_answer_cancels_the_job(live: Live, key: str, model: str, api_key: httpx.Client) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Write a very long story about a lighthouse keeper, with chapters."}],
    }
    started = time.time()
    with live.client(key) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json=body, timeout=httpx.Timeout(10, read=1.5))
    jobs = api_key.get("/v1/jobs", params={"kind": "chat", "limit": 1}).json()["items"]
    assert jobs and datetime.fromisoformat(jobs[0]["created_at"]).timestamp() >= started - 5
    job = wait_status(api_key, jobs[0]["id"], "cancelled", "succeeded", timeout=30)
    if job["status"] == "succeeded":
        pytest.skip("the model finished its answer before the disconnect was seen")


def test_a_job_cancelled_meanwhile_is_a_409_the_client_does_not_send_again(
    live: Live, key: str, model: str, api_key: httpx.Client
) -> None:
    retrying = openai.OpenAI(base_url=f"{live.api_url}/v1", api_key=key, max_retries=2, timeout=120)

    def chat_jobs(**params: str) -> list[str]:
        items = api_key.get("/v1/jobs", params={"kind": "chat", "limit": "100", **params}).json()["items"]
        return [str(j["id"]) for j in items]

    before = set(chat_jobs())
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["answer"] = retrying.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Write a very long story about a lighthouse."}]
            )
        except openai.APIStatusError as exc:
            outcome["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    job_id = wait_for(
        lambda: next((j for j in chat_jobs(status="running") if j not in before), None), what="the job running"
    )
    assert api_key.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    caller.join(60)
    if "answer" in outcome:
        pytest.skip("the model finished its answer before the cancel arrived")
    error = outcome["error"]
    assert isinstance(error, openai.ConflictError) and error.response.headers["x-should-retry"] == "false"
    assert [j for j in chat_jobs() if j not in before] == [job_id]  # not sent again


def test_past_the_tenants_open_streams_a_completion_is_a_rate_limit_error(live: Live) -> None:
    key = create_key(f"openai-capped-{uuid.uuid4().hex[:8]}", admin=True)  # admin: it may send a probe to follow
    cap = live.settings.tenant_max_streams
    limits = httpx.Limits(max_connections=cap + 10)
    with live.client(key, limits=limits) as http:
        job_id = submit(http, queue="ingest", steps=400, sleep=0.25)  # an event every 0.25 s: never idle
        opened = [http.stream("GET", f"/v1/jobs/{job_id}/events") for _ in range(cap)]
        try:
            assert {s.__enter__().status_code for s in opened} == {200}
            capped = openai.OpenAI(base_url=f"{live.api_url}/v1", api_key=key, max_retries=0)
            with pytest.raises(openai.RateLimitError) as refused:
                capped.chat.completions.create(
                    model=live.settings.llm_model, messages=[{"role": "user", "content": "hi"}]
                )
            assert int(refused.value.response.headers["Retry-After"]) > 0
            assert http.get("/v1/jobs", params={"kind": "chat"}).json()["items"] == []  # nothing was queued
        finally:
            for stream in opened:
                stream.__exit__(None, None, None)
            http.post(f"/v1/jobs/{job_id}/cancel")
