"""Object storage through the ``minio`` SDK (MinIO in production, SeaweedFS when embedded)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

import urllib3
from minio import Minio
from minio.error import S3Error

from protostar.errors import ServiceError
from protostar.settings import Settings

# A small object that ``Bucket.ready`` reads. Reading object data needs the store's data servers, as uploads do; a
# bucket's metadata does not: after a restart, SeaweedFS answered HEAD bucket seconds before it could read or store
# an object, and uploads sent then waited on it instead of being answered 503.
HEALTH_KEY = "health/ready"
HEALTH_BODY = b"ok"


def make_minio(settings: Settings, *, read_timeout: float = 30.0, read_retries: int = 3) -> Minio:
    """``read_timeout``: at most this long between bytes of an answer; ``read_retries``: how often a request whose
    answer timed out or broke off is sent again (refused connections and 5xx answers are retried 3 times either
    way, 0.2 s apart and doubling)."""
    if not (settings.s3_endpoint and settings.s3_access_key and settings.s3_secret_key):
        raise ServiceError("PROTOSTAR_S3_ENDPOINT and its keys are not set; start the stack with `protostar up`")
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=3.0, read=read_timeout),
        retries=urllib3.Retry(total=3, read=read_retries, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        maxsize=20,
    )
    return Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key.get_secret_value(),
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=settings.s3_secure,
        http_client=http,
    )


def ensure_bucket(client: Minio, bucket: str) -> None:
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)


@dataclass(frozen=True)
class Bucket:
    """The one bucket Protostar keeps its objects in: what the API and the workers do with it."""

    client: Minio
    name: str

    def put(
        self,
        key: str,
        file: BinaryIO,
        size: int,
        *,
        content_type: str,
        metadata: dict[str, str | list[str] | tuple[str]],
    ) -> None:
        self.client.put_object(self.name, key, file, size, content_type=content_type, metadata=metadata)

    def download(self, key: str, path: str) -> None:
        self.client.fget_object(self.name, key, path)

    def remove(self, key: str) -> None:
        self.client.remove_object(self.name, key)

    def ready(self) -> bool:
        """The store serves object data: ``HEALTH_KEY`` is read (and written first, on a new bucket)."""
        try:
            response = self.client.get_object(self.name, HEALTH_KEY)
        except S3Error as exc:
            if exc.code != "NoSuchKey":
                raise
            self.client.put_object(self.name, HEALTH_KEY, io.BytesIO(HEALTH_BODY), len(HEALTH_BODY))
            return True
        try:
            response.read()
        finally:
            response.close()
            response.release_conn()
        return True
