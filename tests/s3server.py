"""A real S3-compatible server for tests: moto on a free 127.0.0.1 port, spoken to over HTTP.

Use `run_s3_server()` in a fixture, or the ready-made session fixture `s3_server`
(bind it in a test module with ``s3_server = s3server.s3_server``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from minio import Minio


@dataclass(frozen=True)
class S3TestServer:
    endpoint_url: str  # http://127.0.0.1:PORT
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"

    def environ(self) -> dict[str, str]:
        """The variables `pgqueue.storage.open_storage` reads for an s3:// URL."""
        return {
            "PGQUEUE_S3_ENDPOINT": self.endpoint_url,
            "PGQUEUE_S3_ACCESS_KEY": self.access_key,
            "PGQUEUE_S3_SECRET_KEY": self.secret_key,
            "PGQUEUE_S3_REGION": self.region,
            "PGQUEUE_S3_SECURE": "false",
        }

    def client(self) -> Minio:
        return Minio(
            self.endpoint_url.removeprefix("http://"),
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            secure=False,
        )

    def create_bucket(self) -> str:
        """A new, empty bucket with a unique name, so tests never see each other's objects."""
        name = f"test-{uuid.uuid4().hex[:16]}"
        self.client().make_bucket(name)
        return name

    def object_names(self, bucket: str) -> list[str]:
        """Every object in the bucket, plus every multipart upload not yet completed
        or aborted (as ``"<incomplete> name"``): what a failed write must not leave."""
        client = self.client()
        names = [obj.object_name or "" for obj in client.list_objects(bucket, recursive=True)]
        # minio has no public call for this listing; the private one is stable since 7.0.
        uploads = client._list_multipart_uploads(bucket).uploads
        return sorted(names + [f"<incomplete> {upload.object_name}" for upload in uploads])


@contextmanager
def run_s3_server() -> Iterator[S3TestServer]:
    """Start moto's S3 server in a background thread on a free port; stop it on exit."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()  # returns once the socket is bound and listening
    try:
        host, port = server.get_host_and_port()
        yield S3TestServer(endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3TestServer]:
    with run_s3_server() as server:
        yield server
