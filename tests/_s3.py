"""An S3-compatible server on 127.0.0.1 for the tests of the recordings bucket: moto's, in a
thread of the test process, reached over real HTTP by boto3 as a bucket would be (the S3
protocol, signatures included). Credentials are given to boto3's chain the way a deployment
gives them: the standard environment variables.

Import the fixtures into a test module: ``from tests._s3 import s3_bucket, s3_endpoint``.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest

ACCESS_KEY = "AKIDTESTRECORDINGS"
SECRET_KEY = "secret-key-that-never-reaches-a-log"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """The server's endpoint URL (one per test module: starting one takes a moment)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_endpoint(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The endpoint, with boto3's chain given credentials by the environment only (no
    profile, no shared files, no instance metadata)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return s3_server


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the server."""
    import boto3

    name = f"rec-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def closed_endpoint() -> str:
    """An endpoint on 127.0.0.1 where nothing listens (connections refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    """Every object of the bucket, by key."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", ()):
            key = obj["Key"]
            found[key] = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return found
