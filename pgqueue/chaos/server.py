"""The PostgreSQL a chaos run restarts, crashes and reads the log of.

`ChaosServer.own()` starts a server of its own (a temp data dir, durable settings, a small
max_connections, lock waits logged to a file passed with `pg_ctl -l`); `ChaosServer.around()`
drives an EmbeddedPostgres someone else started (the test suite's), through its stop/start.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from pgqueue.embedded import EmbeddedPostgres
from pgqueue.errors import ConfigError

# Durable, so a crash (immediate stop) loses only what a real one would; the log is a plain
# file (no collector) so the harness can read what the server said during a scenario.
OWN_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "logging_collector": "off",
    "log_lock_waits": "on",
    "deadlock_timeout": "1s",
    "log_min_messages": "warning",
    "listen_addresses": "127.0.0.1",
}


class ChaosServer:
    """Start, stop (any `pg_ctl -m` mode), restart, and read the log of one server."""

    def __init__(self, embedded: EmbeddedPostgres, log_path: Path, settings: dict[str, str] | None,
                 scratch: Path | None = None) -> None:
        self.embedded = embedded
        self.log_path = log_path
        # None: started by EmbeddedPostgres.start() (its own settings and log file)
        self.settings = settings
        self.scratch = scratch

    @classmethod
    def own(cls, max_connections: int = 100) -> ChaosServer:
        scratch = Path(tempfile.mkdtemp(prefix="pgqueue-chaos-"))
        embedded = EmbeddedPostgres(scratch / "pg", fast=False)
        log_dir = scratch / "log"
        log_dir.mkdir()
        if embedded.user:
            shutil.chown(log_dir, embedded.user)  # pg_ctl, run as the service user, opens the log
        settings = {**OWN_SETTINGS, "max_connections": str(max_connections), "port": str(embedded.port),
                    "unix_socket_directories": str(embedded.data_dir)}
        return cls(embedded, log_dir / "server.log", settings, scratch)

    @classmethod
    def around(cls, embedded: EmbeddedPostgres) -> ChaosServer:
        return cls(embedded, embedded.data_dir / "server.log", None)

    @property
    def url(self) -> str:
        return self.embedded.url

    def _pg_ctl(self, *args: str) -> None:
        result = subprocess.run([str(self.embedded.bin / "pg_ctl"), "-D", str(self.embedded.data_dir), *args],
                                capture_output=True, text=True, user=self.embedded.user, cwd="/", check=False)
        if result.returncode != 0:
            raise ConfigError(f"pg_ctl {' '.join(args[:1])} failed: {result.stderr.strip()}\n{self.log_tail()}")

    def start(self) -> None:
        if self.settings is None:
            self.embedded.start()
            return
        self.embedded.init()
        options = " ".join(f"-c {key}={value}" for key, value in self.settings.items())
        self._pg_ctl("-l", str(self.log_path), "-o", options, "-w", "-t", "120", "start")

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m fast` (sessions ended cleanly) or `-m immediate` (a crash)."""
        self._pg_ctl("-m", mode, "-w", "-t", "120", "stop")

    def restart(self, mode: str = "fast") -> None:
        if self.settings is None:  # the embedded server re-applies its settings on start
            self.stop(mode)
            self.embedded.start()
            return
        self._pg_ctl("-l", str(self.log_path), "-m", mode, "-w", "-t", "120", "restart")

    def is_running(self) -> bool:
        return self.embedded.is_running()

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str | None:
        """What the server logged after `offset` bytes (None when the log cannot be read)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return None

    def log_tail(self, size: int = 2000) -> str:
        text = self.log_since(max(0, self.log_size() - size))
        return text or ""

    def destroy(self) -> None:
        self.embedded.destroy()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
