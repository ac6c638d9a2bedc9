"""Throwaway pieces of a deployment past one box, for the test suite and the bench: a PgBouncer
in transaction-pooling mode in front of a server, and a streaming read replica of an embedded one.

Both run the machine's binaries (Debian's ``pgbouncer`` package; the PostgreSQL binaries the
embedded server uses, so the replica has the primary's major version) as the embedded server's
service user when we are root (PgBouncer and PostgreSQL refuse to run as root).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pgqueue.embedded import EmbeddedPostgres, _service_user, free_port
from pgqueue.errors import ConfigError

PGBOUNCER_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer")


def find_pgbouncer() -> str | None:
    """The pgbouncer binary (on PATH or where Debian puts it), or None when it is not installed."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((path for path in PGBOUNCER_CANDIDATES if os.access(path, os.X_OK)), None)


def _wait_for_port(port: int, alive: object, timeout: float, what: str) -> None:
    """Until 127.0.0.1:port accepts a TCP connection (``alive()`` false: the process died)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if not alive():  # type: ignore[operator]
            raise ConfigError(f"{what} exited before it listened on port {port}")
        if time.monotonic() > deadline:
            raise ConfigError(f"{what} not listening on port {port} after {timeout:.0f}s")
        time.sleep(0.05)


def _reachable_by(user: str | None, path: Path) -> None:
    """Let the service user into ``path`` (its parents need the x bit for others)."""
    if user is None:
        return
    shutil.chown(path, user)
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o011)


class EmbeddedPgBouncer:
    """``pgbouncer`` in transaction-pooling mode on a free port in front of the server at
    ``server_url``: every database of that server, client auth ``trust`` on 127.0.0.1."""

    def __init__(self, server_url: str, work_dir: str | Path, *, port: int | None = None,
                 pool_size: int = 20, pool_mode: str = "transaction") -> None:
        binary = find_pgbouncer()
        if binary is None:
            raise ConfigError("pgbouncer is not installed (Debian/Ubuntu: apt-get install pgbouncer)")
        self.binary = binary
        self.server = urlsplit(server_url)
        self.work_dir = Path(work_dir).absolute()
        self.port = port or free_port()
        self.pool_size = pool_size
        self.pool_mode = pool_mode
        self.user = _service_user()
        self.process: subprocess.Popen[bytes] | None = None

    def url_for(self, database_url: str) -> str:
        """``database_url`` (a database of the server behind us) as reached through PgBouncer."""
        parts = urlsplit(database_url)
        netloc = f"{parts.username or 'postgres'}@127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def log_path(self) -> Path:
        return self.work_dir / "pgbouncer.log"

    def _config(self) -> str:
        user = self.server.username or "postgres"
        target = f"host={self.server.hostname or '127.0.0.1'} port={self.server.port or 5432} user={user}"
        if self.server.password:
            target += f" password={self.server.password}"
        return "\n".join([
            "[databases]",
            # the wildcard: any database name the client asks for, on the same server
            f"* = {target}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {self.work_dir / 'userlist.txt'}",
            f"admin_users = {user}",
            f"pool_mode = {self.pool_mode}",
            f"default_pool_size = {self.pool_size}",
            "max_client_conn = 2000",
            # psycopg sends neither, but JDBC and some drivers do; PgBouncer refuses unknown ones
            "ignore_startup_parameters = extra_float_digits,options",
            f"logfile = {self.log_path}",
            "log_connections = 0",
            "log_disconnections = 0",
            "",
        ])

    def start(self) -> EmbeddedPgBouncer:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        user = self.server.username or "postgres"
        (self.work_dir / "userlist.txt").write_text(f'"{user}" ""\n')
        config = self.work_dir / "pgbouncer.ini"
        config.write_text(self._config())
        _reachable_by(self.user, self.work_dir)
        for path in (config, self.work_dir / "userlist.txt"):
            if self.user:
                shutil.chown(path, self.user)
        with (self.work_dir / "stdout.log").open("ab") as out:
            self.process = subprocess.Popen([self.binary, str(config)], stdout=out, stderr=subprocess.STDOUT,
                                            user=self.user, cwd=self.work_dir)
        try:
            _wait_for_port(self.port, lambda: self.process is not None and self.process.poll() is None, 30,
                           "pgbouncer")
        except ConfigError as exc:
            self.stop()
            raise ConfigError(f"{exc}:\n{self.output()}") from None
        return self

    def output(self) -> str:
        parts = [path.read_text(errors="replace")[-3000:] for path in (self.work_dir / "stdout.log", self.log_path)
                 if path.exists()]
        return "\n".join(parts)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class EmbeddedReplica:
    """A hot standby of an embedded primary: ``pg_basebackup -R`` (which writes standby.signal
    and primary_conninfo), then the primary's own binaries on a free port."""

    def __init__(self, primary: EmbeddedPostgres, data_dir: str | Path, *, port: int | None = None) -> None:
        self.primary = primary
        self.server = EmbeddedPostgres(data_dir, port=port, fast=primary.fast)

    @property
    def url(self) -> str:
        return self.server.url

    def url_for(self, database_url: str) -> str:
        """``database_url`` (a database of the primary) on the replica."""
        parts = urlsplit(database_url)
        return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{self.server.port}"))

    def start(self) -> EmbeddedReplica:
        data_dir = self.server.data_dir
        if not (data_dir / "PG_VERSION").exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(data_dir, 0o700)
            _reachable_by(self.server.user, data_dir)
            result = self.primary._run(
                "pg_basebackup", "-D", str(data_dir), "-R", "-X", "stream", "-c", "fast",
                "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres", check=False)
            if result.returncode != 0:
                raise ConfigError(f"pg_basebackup failed: {result.stderr.strip()}")
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.destroy()
