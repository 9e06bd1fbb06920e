"""Collections, metadata filters and PATCH of a document's metadata, on the live stack: CRUD and another
tenant's 404s, uploads straight into a collection, filtered search with every operator, clear 422s for bad
filters, and chat answers that retrieve only from the session's (or the message's) collections."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from protostar.auth import create_key
from protostar.client import Client, InvalidRequest, NotFound
from protostar.db.engine import make_sessionmaker
from tests.api.test_jobs import wait_status
from tests.conftest import Live
from tests.ingest.test_documents_api import upload

pytestmark = pytest.mark.timeout(600)

# Each document states one fact in words the others share, so an unscoped search finds them all.
FACTS = {
    "harbour": ("The Velloran harbour lighthouse keeper logs every ship at dusk.", {"team": "ports", "year": 2021}),
    "mill": ("The Velloran mill keeper logs every grain sack at dusk.", {"team": "farms", "year": 2019}),
    "forge": (
        "The Velloran forge keeper logs every horseshoe at dusk.",
        {"team": "ports", "year": 2023, "reviewed": "2024-05-02", "tags": ["metal", "fire"]},
    ),
}


def tenant_client(live: Live, engine: Engine, prefix: str) -> httpx.Client:
    with make_sessionmaker(engine).begin() as session:
        key = create_key(session, tenant=f"{prefix}-{uuid.uuid4().hex[:8]}", admin=False)
    client = live.client(key)
    client.timeout = httpx.Timeout(60)
    return client


@pytest.fixture(scope="module")
def tenant(live: Live, engine: Engine) -> Iterator[httpx.Client]:
    with tenant_client(live, engine, "coll") as client:
        yield client


@pytest.fixture(scope="module")
def other(live: Live, engine: Engine) -> Iterator[httpx.Client]:
    with tenant_client(live, engine, "coll-other") as client:
        yield client


@pytest.fixture(scope="module")
def docs(tenant: httpx.Client) -> dict[str, str]:
    """The three documents, ingested: name -> document id."""
    ids, jobs = {}, []
    for name, (fact, metadata) in FACTS.items():
        body = f"{fact}\n\n{fact}\n".encode()
        response = upload(tenant, f"{name}.txt", body, metadata=json.dumps(metadata))
        assert response.status_code == 202, response.text
        ids[name] = response.json()["document_id"]
        jobs.append(response.json()["job_id"])
    for job_id in jobs:
        wait_status(tenant, job_id, "succeeded", timeout=240)
    return ids


def names(docs: dict[str, str], hits: list[dict[str, Any]]) -> set[str]:
    by_id = {v: k for k, v in docs.items()}
    return {by_id[h["document_id"]] for h in hits}


def search(api: httpx.Client, **body: Any) -> httpx.Response:
    return api.post("/v1/search", json={"query": "Velloran keeper logs at dusk", "top_k": 10, **body})


def test_collections_crud_and_documents_stay_when_their_collection_goes(
    tenant: httpx.Client, docs: dict[str, str]
) -> None:
    created = tenant.post("/v1/collections", json={"name": "coast"})
    assert created.status_code == 201, created.text
    collection = created.json()
    assert collection["name"] == "coast" and collection["document_count"] == 0
    cid = collection["id"]
    assert cid in [c["id"] for c in tenant.get("/v1/collections").json()["items"]]

    added = tenant.post(f"/v1/collections/{cid}/documents", json={"document_ids": [docs["harbour"], docs["forge"]]})
    assert added.status_code == 200 and added.json()["document_count"] == 2, added.text
    again = tenant.post(f"/v1/collections/{cid}/documents", json={"document_ids": [docs["harbour"]]})
    assert again.json()["document_count"] == 2  # once only
    listed = tenant.get(f"/v1/collections/{cid}/documents").json()["items"]
    assert {d["id"] for d in listed} == {docs["harbour"], docs["forge"]}
    assert cid in tenant.get(f"/v1/documents/{docs['harbour']}").json()["collection_ids"]

    renamed = tenant.patch(f"/v1/collections/{cid}", json={"name": "shore"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "shore"
    assert tenant.get(f"/v1/collections/{cid}").json()["name"] == "shore"

    assert tenant.delete(f"/v1/collections/{cid}/documents/{docs['forge']}").status_code == 204
    assert tenant.delete(f"/v1/collections/{cid}/documents/{docs['forge']}").status_code == 404
    assert tenant.get(f"/v1/collections/{cid}").json()["document_count"] == 1

    assert tenant.delete(f"/v1/collections/{cid}").status_code == 204
    assert tenant.get(f"/v1/collections/{cid}").status_code == 404
    assert tenant.get(f"/v1/documents/{docs['harbour']}").status_code == 200  # the document stays

    unknown = tenant.post(f"/v1/collections/{uuid.uuid4()}/documents", json={"document_ids": [docs["mill"]]})
    assert unknown.status_code == 404
    assert tenant.post("/v1/collections", json={"name": ""}).status_code == 422


def test_another_tenants_collection_is_a_404_everywhere(
    tenant: httpx.Client, other: httpx.Client, docs: dict[str, str]
) -> None:
    mine = tenant.post("/v1/collections", json={"name": "private"}).json()["id"]
    theirs = other.post("/v1/collections", json={"name": "theirs"}).json()["id"]
    assert other.get(f"/v1/collections/{mine}").status_code == 404
    assert other.patch(f"/v1/collections/{mine}", json={"name": "x"}).status_code == 404
    assert other.delete(f"/v1/collections/{mine}").status_code == 404
    assert other.get(f"/v1/collections/{mine}/documents").status_code == 404
    assert mine not in [c["id"] for c in other.get("/v1/collections").json()["items"]]
    # My documents cannot go into their collection, nor theirs into mine; nothing is added.
    added = other.post(f"/v1/collections/{theirs}/documents", json={"document_ids": [docs["mill"]]})
    assert added.status_code == 404
    assert other.get(f"/v1/collections/{theirs}").json()["document_count"] == 0
    assert search(tenant, collection_ids=[theirs]).status_code == 404
    assert upload(tenant, "x.txt", b"some text " + uuid.uuid4().hex.encode(), collection_id=theirs).status_code == 404
    assert tenant.post("/v1/sessions", json={"collection_ids": [theirs]}).status_code == 404
    assert tenant.get(f"/v1/collections/{mine}").status_code == 200


def test_an_upload_goes_straight_into_a_collection(other: httpx.Client) -> None:
    """(As the other tenant: the search tests count the first tenant's documents.)"""
    cid = other.post("/v1/collections", json={"name": "inbox"}).json()["id"]
    response = upload(other, "note.txt", b"A note about inbox things " + uuid.uuid4().hex.encode(), collection_id=cid)
    assert response.status_code == 202, response.text
    listed = other.get(f"/v1/collections/{cid}/documents").json()["items"]
    assert [d["id"] for d in listed] == [response.json()["document_id"]]
    bad = upload(other, "note.txt", b"another note " + uuid.uuid4().hex.encode(), collection_id="not-a-uuid")
    assert bad.status_code == 422 and "collection_id" in bad.json()["error"]["message"]


@pytest.mark.parametrize(
    ("filter_", "expected"),
    [
        (None, {"harbour", "mill", "forge"}),
        ({"team": "ports"}, {"harbour", "forge"}),
        ({"team": {"$eq": "farms"}}, {"mill"}),
        ({"team": {"$in": ["farms", "nobody"]}}, {"mill"}),
        ({"year": {"$gt": 2019}}, {"harbour", "forge"}),
        ({"year": {"$gte": 2021, "$lt": 2023}}, {"harbour"}),
        ({"year": {"$lte": 2019}}, {"mill"}),
        ({"reviewed": {"$gte": "2024-01-01"}}, {"forge"}),
        ({"reviewed": {"$lt": "2024-05-02T00:00:00Z"}}, set()),
        ({"reviewed": {"$exists": True}}, {"forge"}),
        ({"reviewed": {"$exists": False}}, {"harbour", "mill"}),
        ({"tags": "metal"}, {"forge"}),
        ({"team": "ports", "year": {"$lt": 2022}}, {"harbour"}),
    ],
)
def test_a_filtered_search_returns_only_matching_documents(
    tenant: httpx.Client, docs: dict[str, str], filter_: dict[str, Any] | None, expected: set[str]
) -> None:
    response = search(tenant, filter=filter_)
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert names(docs, hits) == expected, hits


def test_search_by_collection(tenant: httpx.Client, docs: dict[str, str]) -> None:
    cid = tenant.post("/v1/collections", json={"name": "mill only"}).json()["id"]
    tenant.post(f"/v1/collections/{cid}/documents", json={"document_ids": [docs["mill"]]})
    assert names(docs, search(tenant, collection_ids=[cid]).json()["hits"]) == {"mill"}
    assert names(docs, search(tenant, collection_ids=[cid], filter={"team": "ports"}).json()["hits"]) == set()
    empty = tenant.post("/v1/collections", json={"name": "empty"}).json()["id"]
    assert search(tenant, collection_ids=[empty]).json()["hits"] == []


@pytest.mark.parametrize(
    ("filter_", "says"),
    [
        ({"year": {"$between": [1, 2]}}, "unknown operator '$between'"),
        ({"year": {"$gt": "soon"}}, "neither a number nor an ISO 8601 date"),
        ({"team": {"$in": "ports"}}, "$in takes a list"),
        ({"team": {"x": {"y": 1}}}, "unknown operator 'x'"),
        ({"team": ["ports"]}, "not an object or array"),
        ({"reviewed": {"$exists": 1}}, "$exists takes true or false"),
        ({f"f{i}": i for i in range(21)}, "at most 20 conditions"),
        ("team = ports", "valid dictionary"),
    ],
)
def test_a_bad_filter_is_a_422_that_says_what_is_wrong(tenant: httpx.Client, filter_: Any, says: str) -> None:
    for response in (
        search(tenant, filter=filter_),
        tenant.post(
            f"/v1/sessions/{uuid.uuid4()}/messages", json={"content": "hello", "filter": filter_}
        ),  # validated before the session is looked up
    ):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_failed" and says in error["message"], error
        assert "filter" in error["message"]


def test_patch_replaces_a_documents_metadata_and_search_filters_on_it(
    tenant: httpx.Client, other: httpx.Client, docs: dict[str, str]
) -> None:
    patched = tenant.patch(f"/v1/documents/{docs['mill']}", json={"metadata": {"team": "ports", "year": 2019}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["metadata"] == {"team": "ports", "year": 2019}
    assert tenant.get(f"/v1/documents/{docs['mill']}").json()["metadata"] == {"team": "ports", "year": 2019}
    assert names(docs, search(tenant, filter={"team": "ports"}).json()["hits"]) == {"harbour", "mill", "forge"}
    try:
        assert tenant.patch(f"/v1/documents/{docs['mill']}", json={"metadata": ["no"]}).status_code == 422
        assert tenant.patch(f"/v1/documents/{docs['mill']}", json={}).status_code == 422
        infinite = tenant.patch(
            f"/v1/documents/{docs['mill']}",
            content=b'{"metadata": {"a": 1e400}}',
            headers={"content-type": "application/json"},
        )
        assert infinite.status_code == 422 and "finite" in infinite.text
        huge = {"blob": "x" * 20_000}
        assert tenant.patch(f"/v1/documents/{docs['mill']}", json={"metadata": huge}).status_code == 422
        assert other.patch(f"/v1/documents/{docs['mill']}", json={"metadata": {}}).status_code == 404
        assert tenant.patch(f"/v1/documents/{uuid.uuid4()}", json={"metadata": {}}).status_code == 404
    finally:
        restored = tenant.patch(f"/v1/documents/{docs['mill']}", json={"metadata": FACTS["mill"][1]})
        assert restored.status_code == 200


def _sources(api: httpx.Client, accepted: dict[str, Any], docs: dict[str, str]) -> set[str]:
    job = wait_status(api, accepted["job_id"], "succeeded", timeout=240)
    return names(docs, job["result"]["sources"])  # type: ignore[index]


def test_chat_retrieves_only_from_the_sessions_collections_or_the_messages(
    tenant: httpx.Client, docs: dict[str, str]
) -> None:
    cid = tenant.post("/v1/collections", json={"name": "harbour"}).json()["id"]
    tenant.post(f"/v1/collections/{cid}/documents", json={"document_ids": [docs["harbour"]]})
    created = tenant.post("/v1/sessions", json={"title": "bound", "collection_ids": [cid]})
    assert created.status_code == 201, created.text
    session_id = created.json()["session_id"]
    assert tenant.get(f"/v1/sessions/{session_id}").json()["collection_ids"] == [cid]

    question = "What does the Velloran mill keeper log at dusk?"  # the mill's fact, outside the binding
    bound = tenant.post(f"/v1/sessions/{session_id}/messages", json={"content": question})
    assert bound.status_code == 202, bound.text
    assert _sources(tenant, bound.json(), docs) == {"harbour"}

    # A message's own scope wins over the session's binding; its filter narrows it.
    own = tenant.post(
        f"/v1/sessions/{session_id}/messages",
        json={"content": question, "collection_ids": [], "filter": {"team": "farms"}},
    )
    assert own.status_code == 202, own.text
    assert _sources(tenant, own.json(), docs) == {"mill"}
    messages = tenant.get(f"/v1/sessions/{session_id}").json()["messages"]
    assert names(docs, messages[-1]["sources"]) == {"mill"}

    # Its collection deleted, the session is bound to nothing: it retrieves from all the tenant's documents.
    assert tenant.delete(f"/v1/collections/{cid}").status_code == 204
    assert tenant.get(f"/v1/sessions/{session_id}").json()["collection_ids"] == []


def test_an_openai_completion_retrieves_only_from_its_collection_ids(
    live: Live, tenant: httpx.Client, other: httpx.Client, docs: dict[str, str]
) -> None:
    """``POST /v1/chat/completions`` takes Protostar's ``collection_ids``: the caller's own (``404`` for another
    tenant's, before any job), and the answer's sources come from them only."""
    cid = tenant.post("/v1/collections", json={"name": "forge only"}).json()["id"]
    tenant.post(f"/v1/collections/{cid}/documents", json={"document_ids": [docs["forge"]]})
    body = {
        "model": live.settings.llm_model,
        "messages": [{"role": "user", "content": "What does the Velloran mill keeper log at dusk?"}],
        "max_tokens": 8,
        "collection_ids": [cid],
    }
    assert other.post("/v1/chat/completions", json=body).status_code == 404
    answered = tenant.post("/v1/chat/completions", json=body, timeout=240)
    assert answered.status_code == 200, answered.text
    assert names(docs, answered.json()["sources"]) == {"forge"}


def test_the_python_client_covers_collections_filters_and_metadata_updates(live: Live, engine: Engine) -> None:
    with make_sessionmaker(engine).begin() as session:
        key = create_key(session, tenant=f"coll-client-{uuid.uuid4().hex[:8]}", admin=False)
    with Client(live.api_url, key, timeout=60) as client:
        collection = client.collections.create("reports")
        body = f"The Ostrava tram depot repaints one tram every week. {uuid.uuid4().hex}".encode()
        upload = client.upload(
            body, filename="depot.txt", metadata={"year": 2022}, collection_id=collection.id, wait=True, timeout=240
        )
        assert upload.ok, upload
        assert client.collections.get(collection.id).document_count == 1
        assert [d.id for d in client.collections.documents(collection.id).items] == [upload.document.id]
        question = "How often does the Ostrava tram depot repaint a tram?"
        assert client.search(question, collection_ids=[collection.id], filter={"year": {"$gte": 2020}})
        assert client.search(question, filter={"year": {"$lt": 2020}}) == []
        assert client.documents.update(upload.document.id, metadata={"year": 2018}).metadata == {"year": 2018}
        assert client.search(question, filter={"year": {"$lt": 2020}})
        with pytest.raises(InvalidRequest):
            client.search(question, filter={"year": {"$near": 1}})
        assert client.collections.rename(collection.id, "old reports").name == "old reports"
        client.collections.remove(collection.id, upload.document.id)
        assert client.collections.add(collection.id, [upload.document.id]).document_count == 1
        assert [c.id for c in client.collections.list().items] == [collection.id]
        client.collections.delete(collection.id)
        with pytest.raises(NotFound):
            client.collections.get(collection.id)
