"""Object storage for uploaded files: one small interface, a local-disk and an S3 provider.

`open_storage(url)` picks the provider by URL scheme:

- ``file:///absolute/root`` -> `LocalStorage`: objects are files under the root.
- ``s3://bucket/optional/prefix`` -> `S3Storage`, built on the ``minio`` client, so it
  works with MinIO, AWS S3 and other S3-compatible stores. Configured from the
  environment (the first variable that is set wins):

  ==================  =====================================  ============================
  setting             variables                              default
  ==================  =====================================  ============================
  endpoint            PGQUEUE_S3_ENDPOINT, AWS_ENDPOINT_URL  s3.amazonaws.com (https)
  access key          PGQUEUE_S3_ACCESS_KEY, AWS_ACCESS_KEY_ID   anonymous
  secret key          PGQUEUE_S3_SECRET_KEY, AWS_SECRET_ACCESS_KEY
  session token       AWS_SESSION_TOKEN                      none
  region              PGQUEUE_S3_REGION, AWS_REGION,         asked from the server
                      AWS_DEFAULT_REGION
  TLS                 PGQUEUE_S3_SECURE (true/false)         from the endpoint's scheme
                                                             (``http://`` -> false),
                                                             else true
  ==================  =====================================  ============================

  The endpoint is ``host:port`` or a URL such as ``http://minio:9000``.

The core is synchronous (minio is); `awrite`, `astat`, `aexists` and `adelete` run it
in a thread for asyncio callers, and `awrite` also accepts an async iterator of chunks
(for example a Starlette request stream).

Keys are relative, ``/``-separated names such as ``uploads/2024/abc.jsonl``; absolute
paths, empty, ``.`` and ``..`` segments, backslashes and control characters are
rejected with `InvalidKey`. Every failure surfaces as a `StorageError` subclass; the
only foreign exceptions that pass through are those raised by the caller's own chunk
iterator, unchanged. A write either stores the whole object or nothing: past
``max_bytes`` (`ObjectTooLarge`) or on any error no partial object or temp file is
left, and an existing object under the same key stays as it was.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import io
import os
import re
import stat as stat_module
import sys
import tempfile
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import msgspec

from pgqueue.errors import ConfigError, PgQueueError

READ_CHUNK_BYTES = 1024 * 1024
# minio needs a part size for streams of unknown length; parts are held in memory
# one at a time, and S3 allows 10,000 of them, so 8 MiB caps an object at ~78 GiB.
S3_PART_BYTES = 8 * 1024 * 1024
S3_MIN_PART_BYTES = 5 * 1024 * 1024
S3_MAX_KEY_BYTES = 1024

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off"}


class StorageError(PgQueueError):
    """Something went wrong talking to the storage backend."""


class ObjectNotFound(StorageError):
    """The key names no object."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no stored object with key {key!r}")
        self.key = key


class ObjectTooLarge(StorageError):
    """A write went past its ``max_bytes``; nothing was stored."""

    def __init__(self, key: str, max_bytes: int) -> None:
        super().__init__(f"object {key!r} is larger than the limit of {max_bytes} bytes")
        self.key = key
        self.max_bytes = max_bytes


class InvalidKey(StorageError, ValueError):
    """The key is not a safe relative object name."""


class InvalidStorageURL(StorageError, ConfigError, ValueError):
    """The storage URL is malformed or names an unsupported scheme."""


class StoredObject(msgspec.Struct, frozen=True):
    """An object in storage. ``sha256`` (hex) is known after `Storage.write`;
    `Storage.stat` does not re-read the object, so there it is None."""

    key: str
    size: int
    sha256: str | None = None


class Storage(abc.ABC):
    """Objects by key. Providers implement the four abstract methods; the rest is shared."""

    url: str  # where the objects live, without credentials (for logs and the README)

    @abc.abstractmethod
    def write(self, key: str, chunks: Iterable[bytes], *, max_bytes: int | None = None) -> StoredObject:
        """Stream ``chunks`` into the object ``key`` (replacing it) without holding it
        whole in memory. Past ``max_bytes`` raise `ObjectTooLarge`; on any failure
        nothing new is left behind."""

    @abc.abstractmethod
    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        """A buffered binary stream over the object from byte ``offset`` (an offset at
        or past the end reads as empty). Close it after use. `ObjectNotFound` if missing."""

    @abc.abstractmethod
    def stat(self, key: str) -> StoredObject:
        """Size of the object (``sha256`` None). `ObjectNotFound` if missing."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing object is not an error."""

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def iter_lines(
        self, key: str, offset: int = 0, *, max_line_bytes: int | None = None
    ) -> Iterator[tuple[bytes, int]]:
        """Yield ``(line, end_offset)`` from byte ``offset`` on, reading 1 MiB at a time.

        Lines keep their ending (``\\n`` or ``\\r\\n``, none on a last unterminated
        line); ``end_offset`` is where the next line starts, so it can be saved as a
        checkpoint and passed back as ``offset`` to resume. A line longer than
        ``max_line_bytes`` is cut to ``max_line_bytes + 1`` bytes (so the caller can
        tell) and the rest of it is skipped unread into memory; its ``end_offset`` is
        still the end of the whole line. `ObjectNotFound` is raised here, not on the
        first ``next()``.
        """
        if max_line_bytes is not None and max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        return _split_lines(self.open_read(key, offset), offset, max_line_bytes)

    async def awrite(
        self,
        key: str,
        chunks: AsyncIterable[bytes] | Iterable[bytes],
        *,
        max_bytes: int | None = None,
    ) -> StoredObject:
        """`write` from asyncio; ``chunks`` may be an async iterator."""
        if isinstance(chunks, AsyncIterable):
            chunks = _pull_from_loop(chunks, asyncio.get_running_loop())
        return await asyncio.to_thread(self.write, key, chunks, max_bytes=max_bytes)

    async def astat(self, key: str) -> StoredObject:
        return await asyncio.to_thread(self.stat, key)

    async def aexists(self, key: str) -> bool:
        return await asyncio.to_thread(self.exists, key)

    async def adelete(self, key: str) -> None:
        await asyncio.to_thread(self.delete, key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def open_storage(url: str, *, environ: Mapping[str, str] | None = None) -> Storage:
    """The provider for ``file:///abs/root`` or ``s3://bucket/prefix``.

    ``environ`` (default ``os.environ``) supplies the S3 settings listed above.
    """
    if not isinstance(url, str) or not url:
        raise InvalidStorageURL("storage URL must be a non-empty string")
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise InvalidStorageURL(f"storage URL {url!r} must not have a query or fragment")
    if parts.scheme == "file":
        root = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not root.startswith("/"):
            raise InvalidStorageURL(f"file storage URL {url!r} must name an absolute path: file:///abs/path")
        return LocalStorage(root)
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not _BUCKET_NAME.fullmatch(bucket):
            raise InvalidStorageURL(f"S3 storage URL {url!r} needs a valid bucket name: s3://bucket/prefix")
        prefix = unquote(parts.path).strip("/")
        if prefix:
            try:
                check_key(prefix)
            except InvalidKey as exc:
                raise InvalidStorageURL(f"S3 storage URL {url!r}: bad prefix: {exc}") from exc
        return S3Storage.from_environment(bucket, prefix, environ)
    raise InvalidStorageURL(f"unsupported storage URL {url!r}: use file:///abs/path or s3://bucket/prefix")


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object name, else raise `InvalidKey`."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("storage key must be a non-empty string")
    if any(ord(char) < 0x20 or char == "\x7f" for char in key):
        raise InvalidKey(f"storage key {key!r} contains a control character")
    if "\\" in key:
        raise InvalidKey(f"storage key {key!r} contains a backslash")
    if key.startswith("/"):
        raise InvalidKey(f"storage key {key!r} must be relative")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise InvalidKey(f"storage key {key!r} has an empty, '.' or '..' segment")
    try:
        encoded_length = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidKey(f"storage key {key!r} is not valid Unicode") from exc
    if encoded_length > S3_MAX_KEY_BYTES:
        raise InvalidKey(f"storage key is longer than {S3_MAX_KEY_BYTES} bytes")
    return key


class LocalStorage(Storage):
    """Objects as files under a root directory (created on first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()

    def write(self, key: str, chunks: Iterable[bytes], *, max_bytes: int | None = None) -> StoredObject:
        path = self._path(key)
        upload = _Upload(key, chunks, max_bytes)
        new_dirs = [
            d
            for d in (path.parent, *path.parent.parents)
            if d.is_relative_to(self.root) and d != self.root and not d.exists()
        ]
        temp_path = None
        with _storage_errors(key, upload):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                # A temp file in the same directory, so os.replace is an atomic rename:
                # readers see the old object or the whole new one, never a partial one.
                fd, temp_path = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
                with os.fdopen(fd, "wb") as file:
                    for chunk in upload:
                        file.write(chunk)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temp_path, path)
            except BaseException:
                if temp_path is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(temp_path)
                for directory in new_dirs:  # deepest first; stops at one in use
                    try:
                        directory.rmdir()
                    except OSError:
                        break
                raise
        return upload.stored_object()

    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        path = self._path(key)
        _check_offset(offset)
        with _storage_errors(key):
            raw = io.FileIO(path, "r")
            try:
                raw.seek(offset)
            except BaseException:
                raw.close()
                raise
        return _buffered(raw, key, raw.close)

    def stat(self, key: str) -> StoredObject:
        path = self._path(key)
        with _storage_errors(key):
            info = path.stat()
        if not stat_module.S_ISREG(info.st_mode):
            raise ObjectNotFound(key)
        return StoredObject(key=key, size=info.st_size)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(ObjectNotFound), _storage_errors(key):
            path.unlink(missing_ok=True)

    def _path(self, key: str) -> Path:
        # resolve() follows symlinks, so a link inside the root cannot lead outside it.
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise InvalidKey(f"storage key {key!r} leads outside the storage root")
        return path


class S3Storage(Storage):
    """Objects in an S3 bucket under an optional prefix, through the minio client."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str = "s3.amazonaws.com",
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        region: str | None = None,
        secure: bool = True,
        part_size: int = S3_PART_BYTES,
    ) -> None:
        from minio import Minio  # lazily: only the S3 provider needs minio installed

        if part_size < S3_MIN_PART_BYTES:
            raise ValueError(f"S3 part size must be at least {S3_MIN_PART_BYTES} bytes")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.url = f"s3://{bucket}/{self.prefix}"
        try:
            self.client = Minio(
                endpoint,
                access_key=access_key,
                secret_key=secret_key,
                session_token=session_token,
                region=region,
                secure=secure,
            )
        except ValueError as exc:
            raise StorageError(f"invalid S3 endpoint {endpoint!r}: {exc}") from exc

    @classmethod
    def from_environment(cls, bucket: str, prefix: str = "", environ: Mapping[str, str] | None = None) -> S3Storage:
        """Configured from the variables in the module docstring."""
        env = os.environ if environ is None else environ

        def first(*names: str) -> str | None:
            return next((env[name] for name in names if env.get(name)), None)

        endpoint = first("PGQUEUE_S3_ENDPOINT", "AWS_ENDPOINT_URL") or "https://s3.amazonaws.com"
        secure = True
        if "://" in endpoint:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or parts.path.strip("/") or not parts.netloc:
                raise StorageError(f"S3 endpoint {endpoint!r} must be host:port or http(s)://host:port")
            endpoint, secure = parts.netloc, parts.scheme == "https"
        secure_setting = first("PGQUEUE_S3_SECURE")
        if secure_setting is not None:
            if secure_setting.strip().lower() not in _TRUE_WORDS | _FALSE_WORDS:
                raise StorageError(f"PGQUEUE_S3_SECURE={secure_setting!r} is not true or false")
            secure = secure_setting.strip().lower() in _TRUE_WORDS
        return cls(
            bucket,
            prefix,
            endpoint=endpoint,
            access_key=first("PGQUEUE_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
            secret_key=first("PGQUEUE_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
            session_token=first("AWS_SESSION_TOKEN"),
            region=first("PGQUEUE_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
            secure=secure,
        )

    def write(self, key: str, chunks: Iterable[bytes], *, max_bytes: int | None = None) -> StoredObject:
        name = self._object_name(key)
        upload = _Upload(key, chunks, max_bytes)
        with _storage_errors(key, upload):
            # Unknown length: minio sends one PUT for a small object, else a multipart
            # upload that it aborts on any exception (ours included), so no object
            # appears unless every byte arrived. One part in flight at a time bounds
            # memory and leaves no helper threads behind after a failure.
            self.client.put_object(
                self.bucket,
                name,
                upload,  # type: ignore[arg-type]  # duck-typed: only read() is used
                length=-1,
                part_size=self.part_size,
                num_parallel_uploads=1,
            )
        return upload.stored_object()

    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        name = self._object_name(key)
        _check_offset(offset)
        from minio.error import S3Error

        with _storage_errors(key):
            try:
                response = self.client.get_object(self.bucket, name, offset=offset)
            except S3Error as exc:
                if exc.code != "InvalidRange":
                    raise
                # S3 refuses a range that starts past the end; here it reads as empty.
                self.stat(key)
                return io.BytesIO(b"")

        def release() -> None:
            response.close()
            response.release_conn()

        return _buffered(response, key, release)

    def stat(self, key: str) -> StoredObject:
        name = self._object_name(key)
        with _storage_errors(key):
            info = self.client.stat_object(self.bucket, name)
        return StoredObject(key=key, size=info.size or 0)

    def delete(self, key: str) -> None:
        name = self._object_name(key)
        with _storage_errors(key):
            self.client.remove_object(self.bucket, name)  # S3 deletes are idempotent

    def _object_name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key


class _Upload:
    """The caller's chunks on their way into storage: counted, hashed, capped at max_bytes.

    Iterating gives the chunks (local files); ``read(n)`` makes it a file for minio.
    An exception from the caller's iterator is remembered so that it can pass through
    untranslated: it is the caller's error, not the storage's.
    """

    def __init__(self, key: str, chunks: Iterable[bytes], max_bytes: int | None) -> None:
        self.key = key
        self._chunks = iter(chunks)
        self._max_bytes = max_bytes
        self._sha256 = hashlib.sha256()
        self._pending = b""
        self.size = 0
        self.source_error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        while (chunk := self._next_chunk()) is not None:
            yield chunk

    def read(self, size: int = -1) -> bytes:
        # Fill the request in one piece: minio concatenates short reads with `+=`,
        # which turns many small chunks into quadratic copying of each part.
        pieces = [self._pending]
        have = len(self._pending)
        while size < 0 or have < size:
            chunk = self._next_chunk()
            if chunk is None:
                break
            pieces.append(chunk)
            have += len(chunk)
        data = b"".join(pieces)
        if size < 0:
            self._pending = b""
            return data
        self._pending = data[size:]
        return data[:size]

    def stored_object(self) -> StoredObject:
        return StoredObject(key=self.key, size=self.size, sha256=self._sha256.hexdigest())

    def _next_chunk(self) -> bytes | None:
        while True:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return None
            except BaseException as exc:
                self.source_error = exc
                raise
            if not isinstance(chunk, bytes | bytearray | memoryview):
                self.source_error = TypeError(f"chunks must be bytes, not {type(chunk).__name__}")
                raise self.source_error
            if not chunk:
                continue
            self.size += len(chunk)
            if self._max_bytes is not None and self.size > self._max_bytes:
                raise ObjectTooLarge(self.key, self._max_bytes)
            self._sha256.update(chunk)
            return bytes(chunk)


@contextlib.contextmanager
def _storage_errors(key: str, upload: _Upload | None = None) -> Iterator[None]:
    """Translate OS and minio errors into ours at the provider boundary."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        if upload is not None and exc is upload.source_error:
            raise
        raise _as_storage_error(exc, key, writing=upload is not None) from exc


def _as_storage_error(exc: Exception, key: str, *, writing: bool) -> StorageError:
    # While writing, a missing or misplaced path means the key collides with a
    # directory (local disk only), not that an object is missing.
    if not writing and isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return ObjectNotFound(key)
    if "minio" in sys.modules:  # only then can the error be one of minio's
        from minio.error import S3Error

        if isinstance(exc, S3Error):
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                return ObjectNotFound(key)
            return StorageError(f"S3 error {exc.code} on {key!r}: {exc.message}")
    return StorageError(f"storage error on {key!r}: {type(exc).__name__}: {exc}")


def _check_offset(offset: int) -> None:
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, not {offset!r}")


class _GuardedRaw(io.RawIOBase):
    """A raw stream whose read errors come out as StorageError."""

    def __init__(self, raw: Any, key: str, release: Callable[[], None]) -> None:
        self._raw = raw
        self._key = key
        self._release = release

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with _storage_errors(self._key):
            return self._raw.readinto(buffer)  # type: ignore[no-any-return]

    def close(self) -> None:
        if not self.closed:
            try:
                self._release()
            finally:
                super().close()


def _buffered(raw: Any, key: str, release: Callable[[], None]) -> BinaryIO:
    guarded = _GuardedRaw(raw, key, release)
    return io.BufferedReader(guarded, buffer_size=READ_CHUNK_BYTES)


def _split_lines(stream: BinaryIO, offset: int, max_line_bytes: int | None) -> Iterator[tuple[bytes, int]]:
    position = offset
    head: list[bytes] = []  # the current line's bytes so far, while its end is unread
    kept = 0
    with stream:
        while chunk := stream.read(READ_CHUNK_BYTES):
            start = 0
            while True:
                newline = chunk.find(b"\n", start)
                end = len(chunk) if newline == -1 else newline + 1
                piece = chunk[start:end]
                position += len(piece)
                if max_line_bytes is not None and kept + len(piece) > max_line_bytes + 1:
                    piece = piece[: max_line_bytes + 1 - kept]
                if piece:
                    head.append(piece)
                    kept += len(piece)
                if newline == -1:
                    break
                yield (head[0] if len(head) == 1 else b"".join(head)), position
                head.clear()
                kept = 0
                start = end
        if kept:
            yield b"".join(head), position


def _pull_from_loop(chunks: AsyncIterable[bytes], loop: asyncio.AbstractEventLoop) -> Iterator[bytes]:
    """Let `write`, running in a worker thread, consume an async iterator: each step
    runs on the event loop while the thread waits."""
    iterator = aiter(chunks)

    async def next_chunk() -> bytes | None:
        try:
            return await anext(iterator)
        except StopAsyncIteration:
            return None

    while (chunk := asyncio.run_coroutine_threadsafe(next_chunk(), loop).result()) is not None:
        yield chunk
