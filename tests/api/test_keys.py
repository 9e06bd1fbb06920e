"""Keys can be listed and revoked, by an admin over HTTP (its own tenant's) and by the operator's CLI (every
tenant's); a revoked key answers 401 on its very next request, in every API process."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.api.test_auth import create_key
from tests.conftest import Live


def cli(*args: str) -> str:
    argv = [sys.executable, "-m", "protostar.cli", "keys", *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture
def tenant_admin(live: Live) -> str:
    return create_key("keys-tenant", admin=True)


def test_an_admin_creates_lists_and_revokes_its_tenants_keys(live: Live, tenant_admin: str) -> None:
    with live.client(tenant_admin) as admin:
        created = admin.post("/v1/admin/keys", json={"admin": False})
        assert created.status_code == 201, created.text
        key = created.json()
        assert key["key"].startswith(key["prefix"]) and key["tenant"] == "keys-tenant" and not key["admin"]
        with live.client(key["key"]) as user:
            assert user.get("/v1/documents").status_code == 200
            listed = admin.get("/v1/admin/keys").json()["items"]
            assert key["id"] in {k["id"] for k in listed}
            assert all("key" not in k for k in listed)
            assert {k["tenant"] for k in listed} == {"keys-tenant"}

            assert admin.delete(f"/v1/admin/keys/{key['id']}").status_code == 204
            refused = user.get("/v1/documents")  # at once: no cache outlives a revocation
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert admin.delete(f"/v1/admin/keys/{key['id']}").status_code == 204  # again: nothing changes
        revoked = next(k for k in admin.get("/v1/admin/keys").json()["items"] if k["id"] == key["id"])
        assert revoked["revoked_at"] is not None


def test_keys_of_another_tenant_are_out_of_reach(live: Live, tenant_admin: str, api: httpx.Client) -> None:
    theirs = api.post("/v1/admin/keys", json={}).json()  # a key of the tenant 'default'
    with live.client(tenant_admin) as admin:
        assert admin.delete(f"/v1/admin/keys/{theirs['id']}").status_code == 404
        assert theirs["id"] not in {k["id"] for k in admin.get("/v1/admin/keys").json()["items"]}
    with live.client(theirs["key"]) as plain:
        assert plain.get("/v1/documents").status_code == 200  # untouched
        assert plain.get("/v1/admin/keys").status_code == 403  # and not an admin


def test_the_cli_lists_and_revokes_keys_of_every_tenant(live: Live) -> None:
    key = create_key("cli-keys-tenant")
    with live.client(key) as client:
        assert client.get("/v1/documents").status_code == 200
        rows = [line.split() for line in cli("list", "--tenant", "cli-keys-tenant").splitlines()[1:]]
        assert [row[2] for row in rows] == [key[:10]]
        assert key not in cli("list")
        assert "revoked" in cli("revoke", rows[0][0])
        assert client.get("/v1/documents").status_code == 401
    row = cli("list", "--tenant", "cli-keys-tenant").splitlines()[1].split()
    assert row[-1] != "-"  # its revocation time
