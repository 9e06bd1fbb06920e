"""Keys belong to one tenant and see only its data; every failure is a 4xx in the contract's shape."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.api.test_jobs import submit, wait_status
from tests.conftest import Live


def create_key(tenant: str, *, admin: bool = False) -> str:
    argv = [sys.executable, "-m", "protostar.cli", "keys", "create", "--tenant", tenant] + (
        ["--admin"] if admin else []
    )
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    assert out.startswith("ps_")
    return out


@pytest.fixture(scope="module")
def other_admin_key(live: Live) -> str:
    return create_key("other-tenant", admin=True)


def test_no_key_is_401(live: Live) -> None:
    with live.client("") as client:
        response = client.get("/v1/jobs/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Bearer ps_wrong", "Basic dXNlcjpwYXNz", "Bearer", "ps_nobearer"])
def test_a_wrong_key_is_401(live: Live, header: str) -> None:
    with httpx.Client(base_url=live.api_url, headers={"Authorization": header}) as client:
        response = client.post("/v1/probes", json={})
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"code", "message"}


def test_another_tenants_job_is_404_everywhere(api: httpx.Client, live: Live, other_admin_key: str) -> None:
    job_id = submit(api, queue="chat")
    wait_status(api, job_id, "succeeded")
    with live.client(other_admin_key) as other:
        assert other.get(f"/v1/jobs/{job_id}").status_code == 404
        assert other.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
        assert other.get(f"/v1/jobs/{job_id}/events").status_code == 404
        own = submit(other, queue="chat")
    assert api.get(f"/v1/jobs/{own}").status_code == 404


def test_a_tenant_key_cannot_send_probes(live: Live) -> None:
    with live.client(create_key("plain-tenant")) as client:
        response = client.post("/v1/probes", json={"queue": "chat"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"queue": "nope"}, "queue"),
        ({"queue": "maintenance"}, "queue must be one of"),
        ({"steps": 0}, "steps"),
        ({"fail": "sometimes"}, "fail"),
    ],
)
def test_a_malformed_request_is_422_with_a_message(api: httpx.Client, body: dict[str, object], fragment: str) -> None:
    response = api.post("/v1/probes", json=body)
    assert response.status_code == 422
    assert fragment in response.json()["error"]["message"]


def test_not_json_is_422(api: httpx.Client) -> None:
    response = api.post("/v1/probes", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_failed"


def test_a_bad_job_id_is_422_and_an_unknown_route_404(api: httpx.Client) -> None:
    assert api.get("/v1/jobs/not-a-uuid").status_code == 422
    response = api.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
