"""Liveness, readiness, metrics and the docs, without a key."""

from __future__ import annotations

from protostar.storage import HEALTH_BODY, HEALTH_KEY, make_minio
from tests.conftest import Live


def test_health_ready_metrics_docs(live: Live) -> None:
    with live.client("") as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert {c["name"]: c["ok"] for c in ready.json()["checks"]} == {
            "redis": True,
            "postgres": True,
            "object_store": True,
        }
        client.get("/v1/jobs/00000000-0000-0000-0000-000000000000")
        metrics = client.get("/metrics").text
        assert 'protostar_queue_depth{queue="ingest"}' in metrics
        assert 'protostar_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="401"}' in metrics
        assert "/v1/probes" in client.get("/openapi.json").json()["paths"]
        assert client.get("/docs").status_code == 200


def test_object_store_readiness_reads_object_data(live: Live) -> None:
    """Readiness of the object store is a read of object data (``HEALTH_KEY``), written again when it is missing:
    a store that lists its bucket but cannot serve data yet (SeaweedFS restarting) is not ready."""
    minio = make_minio(live.settings)
    bucket = live.settings.s3_bucket
    minio.remove_object(bucket, HEALTH_KEY)
    with live.client("") as client:
        assert client.get("/readyz").status_code == 200
    assert minio.get_object(bucket, HEALTH_KEY).read() == HEALTH_BODY
