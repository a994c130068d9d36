"""Run bus processes as child processes: used by the demo, the tests and the benchmarks.

A ``WorkerProcess`` is exactly what an operator runs (``bus worker``), started with the
settings passed as ``BUS_*`` environment variables, its output in a log file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from pydantic import SecretStr

from bus.agents.app import READY as READY_MARK
from bus.errors import BusError
from bus.settings import Settings


def terminate(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM (Faust and uvicorn shut down cleanly), SIGKILL if it takes longer."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``BUS_*`` variables that reproduce ``settings`` in a child process."""
    env = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list):
            value = ",".join(value)
        env[f"BUS_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """One ``bus worker`` child process."""

    def __init__(self, settings: Settings, log_file: Path, *, loglevel: str = "info") -> None:
        self.settings = settings
        self.log_file = log_file
        self.loglevel = loglevel
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> WorkerProcess:
        """Start the worker; with ``wait``, return once its agents have their partitions."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bus.cli", "worker", "--loglevel", self.loglevel],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def log(self) -> str:
        """What this run of the worker has logged so far."""
        if not self.log_file.exists():
            return ""
        with open(self.log_file, "rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the worker logs that its agents have partitions, or fail loudly."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_MARK in self.log():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise BusError(f"worker exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise BusError(f"worker not ready after {timeout}s:\n{self.log()[-3000:]}")

    @property
    def running(self) -> bool:
        """True while the process lives."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (Faust shuts down cleanly), SIGKILL if it takes longer than ``timeout``."""
        return None if self.proc is None else terminate(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, for tests that prove nothing is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: a worker frozen (a long GC, a stalled VM) that the group will evict."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: the frozen worker wakes, still holding the batch it was handling."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> WorkerProcess:
        return self.start() if self.proc is None else self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
