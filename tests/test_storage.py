"""One contract suite for every storage provider: local disk and S3 (moto, via minio)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgqueue.storage import (
    InvalidKey,
    InvalidStorageURL,
    LocalStorage,
    ObjectNotFound,
    ObjectTooLarge,
    S3Storage,
    Storage,
    StorageError,
    open_storage,
)
from tests import s3server

s3_server = s3server.s3_server  # the shared session fixture, bound here for pytest

MiB = 1024 * 1024


@dataclass
class Backend:
    kind: str
    storage: Storage
    everything: Callable[[], list[str]]  # every file/object in the store, temp files included


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        root = tmp_path / "store"
        storage = open_storage(root.as_uri())

        def everything() -> list[str]:
            return sorted(str(path.relative_to(root)) for path in root.rglob("*") if not path.is_dir())

        return Backend("local", storage, everything)
    server: s3server.S3TestServer = request.getfixturevalue("s3_server")
    bucket = server.create_bucket()
    storage = open_storage(f"s3://{bucket}/some/prefix", environ=server.environ())
    return Backend("s3", storage, lambda: server.object_names(bucket))


def pattern_chunks(total: int, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
    """Deterministic, non-repeating-per-chunk bytes, so misplaced chunks change the hash."""
    for index, start in enumerate(range(0, total, chunk_size)):
        size = min(chunk_size, total - start)
        yield (index.to_bytes(4, "big") * (size // 4 + 1))[:size]


def read_all(storage: Storage, key: str, offset: int = 0) -> bytes:
    with storage.open_read(key, offset) as stream:
        return stream.read()


def test_round_trip(backend: Backend) -> None:
    storage = backend.storage
    key = "uploads/ünï cödé.jsonl"
    stored = storage.write(key, [b"hel", b"", b"lo\n"])

    assert (stored.key, stored.size) == (key, 6)
    assert stored.sha256 == hashlib.sha256(b"hello\n").hexdigest()
    assert read_all(storage, key) == b"hello\n"
    assert storage.stat(key).size == 6
    assert storage.exists(key)

    storage.write(key, iter([b"replaced"]))
    assert read_all(storage, key) == b"replaced"
    assert backend.everything() == [backend_name(backend, key)]


def test_empty_object(backend: Backend) -> None:
    stored = backend.storage.write("empty", [])
    assert stored.size == 0 and stored.sha256 == hashlib.sha256().hexdigest()
    assert read_all(backend.storage, "empty") == b""
    assert list(backend.storage.iter_lines("empty")) == []


def test_streaming_write_of_a_multipart_object(backend: Backend) -> None:
    total = 12 * MiB + 123
    expected = hashlib.sha256(b"".join(pattern_chunks(total))).hexdigest()

    stored = backend.storage.write("big.bin", pattern_chunks(total))

    assert (stored.size, stored.sha256) == (total, expected)
    assert backend.storage.stat("big.bin").size == total
    digest = hashlib.sha256()
    with backend.storage.open_read("big.bin") as stream:
        while block := stream.read(MiB):
            digest.update(block)
    assert digest.hexdigest() == expected
    if isinstance(backend.storage, S3Storage):
        storage = backend.storage
        info = storage.client.stat_object(storage.bucket, "some/prefix/big.bin")
        assert str(info.etag).endswith("-2"), f"expected 2 parts, etag {info.etag}"


def test_read_from_offset(backend: Backend) -> None:
    backend.storage.write("digits", [b"0123456789"])

    assert read_all(backend.storage, "digits", 4) == b"456789"
    assert read_all(backend.storage, "digits", 9) == b"9"
    assert read_all(backend.storage, "digits", 10) == b""
    assert read_all(backend.storage, "digits", 99) == b""
    with backend.storage.open_read("digits", 2) as stream:
        assert stream.read(3) == b"234"
        assert stream.readline() == b"56789"
    with pytest.raises(ValueError):
        backend.storage.open_read("digits", -1)


def test_iter_lines_gives_resumable_end_offsets(backend: Backend) -> None:
    content = b'{"a":1}\r\n{"b":2}\n\n{"c":3}'
    backend.storage.write("log.jsonl", [content])

    lines = list(backend.storage.iter_lines("log.jsonl"))

    assert lines == [
        (b'{"a":1}\r\n', 9),
        (b'{"b":2}\n', 17),
        (b"\n", 18),
        (b'{"c":3}', 25),
    ]
    assert list(backend.storage.iter_lines("log.jsonl", 9)) == lines[1:]
    assert list(backend.storage.iter_lines("log.jsonl", 25)) == []


def test_iter_lines_across_read_chunks(backend: Backend) -> None:
    # Lines of growing length cross the 1 MiB read boundaries at varied points.
    lines = [b"x" * (n * 37 % 5000) + b"\n" for n in range(1500)] + [b"tail"]
    content = b"".join(lines)
    assert len(content) > 3 * MiB
    backend.storage.write(
        "many.jsonl",
        [content[i : i + 100_000] for i in range(0, len(content), 100_000)],
    )

    got = list(backend.storage.iter_lines("many.jsonl"))

    assert [line for line, _ in got] == lines
    assert [end for _, end in got] == [sum(map(len, lines[: i + 1])) for i in range(len(lines))]


def test_iter_lines_cuts_overlong_lines(backend: Backend) -> None:
    long_line = b"y" * (3 * MiB) + b"\n"
    backend.storage.write("long.jsonl", [b"ok\n", long_line, b"z" * 50])

    got = list(backend.storage.iter_lines("long.jsonl", max_line_bytes=10))

    assert got == [
        (b"ok\n", 3),
        (b"y" * 11, 3 + len(long_line)),
        (b"z" * 11, 3 + len(long_line) + 50),
    ]


def test_too_large_leaves_nothing_and_keeps_the_old_object(backend: Backend) -> None:
    backend.storage.write("upload.bin", [b"old version"])
    before = backend.everything()

    # 10 MiB: past the first 8 MiB S3 part, so the multipart upload must be aborted.
    with pytest.raises(ObjectTooLarge) as caught:
        backend.storage.write("upload.bin", pattern_chunks(12 * MiB), max_bytes=10 * MiB)
    with pytest.raises(ObjectTooLarge):
        backend.storage.write("new/nested/upload.bin", pattern_chunks(12 * MiB), max_bytes=MiB)

    assert caught.value.max_bytes == 10 * MiB
    assert backend.everything() == before
    assert read_all(backend.storage, "upload.bin") == b"old version"
    assert not backend.storage.exists("new/nested/upload.bin")
    if isinstance(backend.storage, LocalStorage):  # no empty directories left either
        assert not (backend.storage.root / "new").exists()


def test_exactly_max_bytes_is_allowed(backend: Backend) -> None:
    assert backend.storage.write("limit", [b"12345", b"67890"], max_bytes=10).size == 10


def test_failing_source_leaves_nothing(backend: Backend) -> None:
    class ClientWentAwayError(Exception):
        pass

    def interrupted() -> Iterator[bytes]:
        yield from pattern_chunks(9 * MiB)
        raise ClientWentAwayError

    with pytest.raises(ClientWentAwayError):  # the caller's own error comes through as is
        backend.storage.write("partial.bin", interrupted())
    with pytest.raises(TypeError):
        backend.storage.write("partial.bin", ["not bytes"])  # type: ignore[list-item]

    assert backend.everything() == []


def test_missing_object(backend: Backend) -> None:
    storage = backend.storage
    with pytest.raises(ObjectNotFound):
        storage.stat("nope")
    with pytest.raises(ObjectNotFound):
        storage.open_read("nope")
    with pytest.raises(ObjectNotFound):
        storage.open_read("nope", 5)
    with pytest.raises(ObjectNotFound):
        storage.iter_lines("nope/deeper")
    assert not storage.exists("nope")


def test_delete_is_idempotent(backend: Backend) -> None:
    storage = backend.storage
    storage.delete("never-written")
    storage.write("a/b.txt", [b"x"])
    storage.delete("a/b.txt")
    storage.delete("a/b.txt")
    assert not storage.exists("a/b.txt")
    assert backend.everything() == []


@pytest.mark.parametrize(
    "key",
    [
        "../x",
        "a/../../x",
        "..",
        "/etc/passwd",
        "a\\b",
        "a\x00b",
        "a\nb",
        "",
        "a//b",
        "./a",
        "a/",
    ],
)
def test_unsafe_keys_are_rejected(backend: Backend, key: str) -> None:
    storage = backend.storage
    operations: list[Callable[[], object]] = [
        lambda: storage.write(key, [b"x"]),
        lambda: storage.open_read(key),
        lambda: storage.stat(key),
        lambda: storage.exists(key),
        lambda: storage.delete(key),
        lambda: storage.iter_lines(key),
    ]
    for operation in operations:
        with pytest.raises(InvalidKey):
            operation()
    assert backend.everything() == []


def test_local_symlink_cannot_leave_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "store"
    root.mkdir()
    (root / "link").symlink_to(outside)
    storage = LocalStorage(root)

    with pytest.raises(InvalidKey):
        storage.write("link/escape.txt", [b"x"])
    assert list(outside.iterdir()) == []


def test_local_key_colliding_with_a_directory(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.write("a/b", [b"x"])
    for key in ("a", "a/b/c"):  # S3 allows both; a file system cannot
        with pytest.raises(StorageError) as caught:
            storage.write(key, [b"y"])
        assert not isinstance(caught.value, ObjectNotFound)
    with pytest.raises(ObjectNotFound):
        storage.stat("a")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["a", "a/b"]


def test_async_helpers(backend: Backend) -> None:
    async def body() -> AsyncIterator[bytes]:
        for chunk in pattern_chunks(MiB + 5, 4096):
            await asyncio.sleep(0)
            yield chunk

    async def scenario() -> None:
        storage = backend.storage
        stored = await storage.awrite("async.bin", body())
        assert stored.size == MiB + 5
        assert (await storage.astat("async.bin")).size == MiB + 5
        assert await storage.aexists("async.bin")
        with pytest.raises(ObjectTooLarge):
            await storage.awrite("async-big.bin", body(), max_bytes=MiB)
        await storage.adelete("async.bin")
        assert not await storage.aexists("async.bin")

    asyncio.run(scenario())
    assert backend.everything() == []


def test_s3_settings_fall_back_to_aws_variables(
    s3_server: s3server.S3TestServer,
) -> None:
    bucket = s3_server.create_bucket()
    storage = open_storage(
        f"s3://{bucket}",
        environ={
            "AWS_ENDPOINT_URL": s3_server.endpoint_url,  # http:// implies no TLS
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
            "AWS_DEFAULT_REGION": s3_server.region,
        },
    )
    storage.write("k", [b"v"])
    assert s3_server.object_names(bucket) == ["k"]


def test_s3_errors_are_ours(s3_server: s3server.S3TestServer) -> None:
    storage = open_storage("s3://no-such-bucket/p", environ=s3_server.environ())
    with pytest.raises(StorageError) as caught:
        storage.write("k", [b"v"])
    assert "NoSuchBucket" in str(caught.value)
    with pytest.raises(StorageError):
        open_storage("s3://bucket", environ={"PGQUEUE_S3_SECURE": "maybe"})


@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "/just/a/path",
        "ftp://host/path",
        "file:relative/path",
        "file://relative/path",
        "file://",
        "s3://",
        "s3:///prefix",
        "s3://Bad_Bucket/x",
        "s3://bucket/../x",
        "s3://bucket/p?endpoint=x",
        "s3://user:secret@bucket/p",
    ],
)
def test_malformed_urls_are_rejected(url: str) -> None:
    with pytest.raises(InvalidStorageURL):
        open_storage(url, environ={})


def test_urls_choose_the_provider(tmp_path: Path) -> None:
    local = open_storage(tmp_path.as_uri())
    s3 = open_storage("s3://my-bucket/logs/", environ={"PGQUEUE_S3_ENDPOINT": "minio:9000"})
    assert isinstance(local, LocalStorage) and local.root == tmp_path.resolve()
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("my-bucket", "logs")
    assert s3.url == "s3://my-bucket/logs"


def backend_name(backend: Backend, key: str) -> str:
    return key if backend.kind == "local" else f"some/prefix/{key}"
