"""Fixtures for web tests: a real uvicorn server on a free port serving ``create_app`` against
the test's database, optionally with the app's worker in the server's event loop, and users
with API tokens.

    from tests.web_fixtures import *  # noqa: F403  (in a test module)

    async def test_something(live_server, alice):
        async with live_server.client(alice) as http:
            response = await http.get("/jobs")

``start_server`` starts more servers (other settings, a worker, another database); every
server it started is stopped at the end of the test.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
import uvicorn

from app.auth import hash_token, new_api_token
from app.main import create_app
from app.settings import AppSettings
from app.store import create_user_sync
from pgqueue.db import connect_sync
from tests.helpers import wait_for_sync

__all__ = [
    "ApiUser", "LiveServer", "admin", "alice", "bob", "live_server", "live_server_with_worker", "make_user",
    "start_server",
]


class ApiUser(msgspec.Struct, kw_only=True):
    id: int
    name: str
    token: str
    is_admin: bool

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def create_api_user(database_url: str, name: str, *, admin: bool = False) -> ApiUser:
    token = new_api_token()
    with connect_sync(database_url) as conn:
        user = create_user_sync(conn, name, admin, hash_token(token), label="test")
        conn.commit()
    return ApiUser(id=user.id, name=user.name, token=token, is_admin=admin)


class LiveServer:
    """A uvicorn server in a background thread (its own event loop), on 127.0.0.1:<free port>."""

    def __init__(self, settings: AppSettings, **app_options: Any) -> None:
        self.settings = settings
        self.app = create_app(settings, **app_options)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name=f"uvicorn-{self.port}", daemon=True)
        self.error: BaseException | None = None

    def _serve(self) -> None:
        try:
            self.server.run(sockets=[self._socket])
        except BaseException as exc:  # surfaced by start()
            self.error = exc

    def start(self) -> LiveServer:
        self._thread.start()
        wait_for_sync(lambda: self.server.started or not self._thread.is_alive(), timeout=30,
                      message="uvicorn to start")
        if not self.server.started:
            raise RuntimeError(f"the test server did not start: {self.error!r}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()

    @property
    def database_url(self) -> str:
        assert self.settings.database_url is not None
        return self.settings.database_url

    @property
    def state(self) -> dict[str, Any]:
        """What the app's lifespan opened (queue, store, worker, ...), as routes see it."""
        return self.server.lifespan.state

    @property
    def worker(self) -> Any:
        """The embedded pgqueue Worker (when started with run_worker=True), else None."""
        return self.state.get("worker")

    def url(self, path: str) -> str:
        return self.base_url + path

    def client(self, user: ApiUser | None = None, **options: Any) -> httpx.AsyncClient:
        headers = {**(user.headers if user else {}), **options.pop("headers", {})}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=options.pop("timeout", 30),
                                 **options)

    def sync_client(self, user: ApiUser | None = None, **options: Any) -> httpx.Client:
        headers = {**(user.headers if user else {}), **options.pop("headers", {})}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=options.pop("timeout", 30), **options)

    def create_user(self, name: str, *, admin: bool = False) -> ApiUser:
        return create_api_user(self.database_url, name, admin=admin)


@pytest.fixture
def start_server(db_url: str) -> Iterator[Callable[..., LiveServer]]:
    """``start_server(run_worker=True, max_body_bytes=..., database_url=..., queue=...)``."""
    started: list[LiveServer] = []

    def start(queue: Any = None, **settings: Any) -> LiveServer:
        settings.setdefault("database_url", db_url)
        settings.setdefault("pool_size", 4)
        settings.setdefault("secret", "test-secret")
        server = LiveServer(AppSettings(**settings), **({"queue": queue} if queue is not None else {}))
        started.append(server)
        return server.start()

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def live_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    """The API alone: jobs stay queued unless a test runs a worker."""
    return start_server()


@pytest.fixture
def live_server_with_worker(start_server: Callable[..., LiveServer]) -> LiveServer:
    """The API with the app's worker (all app kinds) running in the server's event loop."""
    return start_server(run_worker=True, worker_concurrency=8, worker_shutdown_grace=2.0)


@pytest.fixture
def make_user(db_url: str) -> Callable[..., ApiUser]:
    return lambda name, admin=False: create_api_user(db_url, name, admin=admin)


@pytest.fixture
def alice(make_user: Callable[..., ApiUser]) -> ApiUser:
    return make_user("alice")


@pytest.fixture
def bob(make_user: Callable[..., ApiUser]) -> ApiUser:
    return make_user("bob")


@pytest.fixture
def admin(make_user: Callable[..., ApiUser]) -> ApiUser:
    return make_user("root", admin=True)


async def job_count(server: LiveServer) -> int:
    """Rows in pgqueue.jobs of the server's database (to prove a refused request wrote nothing)."""
    async with await psycopg.AsyncConnection.connect(server.database_url) as conn:
        row = await (await conn.execute("SELECT count(*) FROM pgqueue.jobs")).fetchone()
        assert row is not None
        return int(row[0])
