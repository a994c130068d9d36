"""Apache Kafka on this machine, from its jars on Maven Central: ``bus broker --engine kafka``.

The reference broker for the tests, the benchmarks and a developer's own runs. Apache Kafka's
distribution is its jars plus shell scripts, so nothing but Java 17+ and Maven is needed:

* :func:`kafka_jars` fetches the version pinned in ``bus/data/kafka/pom.xml`` once, into
  ``~/.cache/collaboration-bus/kafka-<version>/libs`` (``BUS_KAFKA_CACHE`` moves it);
* :class:`KafkaCluster` runs 1 or 3 KRaft nodes (each broker and controller) on loopback, with
  the broker settings of :mod:`bus.streaming.kafka_settings` (what compose and Kubernetes
  run), formats
  their storage on first start and keeps the log in the data folder across restarts; with
  ``sasl=True`` clients log in (SCRAM-SHA-512) and ACLs decide what each principal may do;
* Kafka's own command-line tools (``kafka-acls.sh``, ``kafka-configs.sh``, ``kafka-topics.sh``)
  are small scripts in ``<data-dir>/bin`` that run the same jars.

Production runs Kafka its own way (docker-compose.yml, deploy/k8s/kafka); this module is only
how a developer machine gets the same broker. Measured start-up figures: docs/broker.md.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import importlib.resources
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from bus.dev.brokers import (
    ENGINES,
    EmbeddedBroker,
    _check_loopback,
    _run,
    free_port,
    terminate_group,
)
from bus.errors import BrokerError, ConfigurationError
from bus.streaming.kafka_settings import KAFKA_VERSION, settings_for
from bus.streaming.reach import POLL_INTERVAL, PROBE_TIMEOUT, probe

#: Heap of one node: enough for the tests and benchmarks, small on a 2-core, shared machine.
HEAP = "512m"
#: What a node's JVM is told besides the heap.
_JVM_FLAGS = (
    "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)  # fmt: skip
#: Settings for one machine only: no group waits 3 s for more members, and the internal topics
#: are smaller than a production cluster's 50 partitions (created on first use, they cost start-up).
_LOCAL_SETTINGS = {
    "group.initial.rebalance.delay.ms": "0",
    "offsets.topic.num.partitions": "6",
    "transaction.state.log.num.partitions": "6",
    "num.network.threads": "2",
    "num.io.threads": "4",
}
#: A lone node's controller fences its own broker when a heartbeat is 9 s late (a starved JVM
#: on a busy machine), and every partition then has no leader until it is back. With one node
#: there is nobody to fail over to, so it waits longer.
_ONE_NODE_SETTINGS = {"broker.session.timeout.ms": "60000"}
_LOG4J = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""
#: The principal of the bus's own processes on a SASL cluster: a super user, as the
#: workers, ``bus topics create`` and the admin tools act for the whole bus.
SUPER_USER = "bus"
#: The SASL mechanism clients log in with; SCRAM users live in the cluster's metadata.
SASL_MECHANISM = "SCRAM-SHA-512"
#: Kafka's command-line tools as ``<data-dir>/bin`` has them: script name -> main class.
TOOLS = {
    "kafka-acls.sh": "org.apache.kafka.tools.AclCommand",
    "kafka-configs.sh": "kafka.admin.ConfigCommand",
    "kafka-topics.sh": "org.apache.kafka.tools.TopicCommand",
}
#: A tool runs for a second or two: a small heap, no optimising compiler.
_TOOL_FLAGS = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")


def cache_dir() -> Path:
    """Where the jars of the pinned Kafka version are kept, outside any work tree."""
    root = os.environ.get("BUS_KAFKA_CACHE") or os.environ.get("XDG_CACHE_HOME")
    base = Path(root) if root else Path.home() / ".cache"
    if not os.environ.get("BUS_KAFKA_CACHE"):
        base = base / "collaboration-bus"
    return base / f"kafka-{KAFKA_VERSION}"


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ConfigurationError(
            f"the kafka engine needs `{tool}` on PATH: install {package} "
            f"(Debian: apt-get install {package})",
            reason="config.broker_engine",
        )
    return path


def kafka_jars(say: Callable[[str], None] = print) -> Path:
    """The folder of Apache Kafka's jars, fetched through Maven the first time.

    Safe to call from several processes at once: one fetches under a file lock, the others wait
    and reuse its result. ``say`` is told once when a fetch starts (it takes a while). The
    fetch records the digest of the pom it followed; when the pom gains a dependency, what is
    new is added to the folder and nothing is removed, as running brokers read those jars.
    """
    libs = cache_dir() / "libs"
    done = libs / ".complete"
    pom_file = importlib.resources.files("bus") / "data" / "kafka" / "pom.xml"
    wanted = hashlib.sha256(pom_file.read_bytes()).hexdigest()
    if _fetched(done) == wanted:
        return libs
    mvn = _need("mvn", "maven")
    libs.parent.mkdir(parents=True, exist_ok=True)
    with open(libs.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _fetched(done) == wanted:
            return libs
        say(f"fetching Apache Kafka {KAFKA_VERSION} from Maven Central into {libs} (once)")
        partial = libs.with_name("libs.partial")
        shutil.rmtree(partial, ignore_errors=True)
        with importlib.resources.as_file(pom_file) as pom:
            command = [
                mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                f"-DoutputDirectory={partial}", f"-Dkafka.version={KAFKA_VERSION}",
            ]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise BrokerError(
                f"could not fetch Apache Kafka {KAFKA_VERSION} with Maven "
                f"(exit {result.returncode}):\n{tail}",
                reason="broker.fetch",
            )
        if libs.exists():  # the pom changed: add what is new, beside jars a broker may be using
            for jar in partial.iterdir():
                if not (libs / jar.name).exists():
                    jar.rename(libs / jar.name)
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.rename(libs)
        done.write_text(wanted)
    return libs


def _fetched(done: Path) -> str | None:
    """The pom digest a complete fetch recorded ("" for an older build's), None: no fetch."""
    try:
        return done.read_text().strip()
    except FileNotFoundError:
        return None


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, base64url without padding, as Kafka makes them.

    Like Kafka's own ``Uuid.randomUuid``, never one starting with ``-``: the storage tool's
    command line would take it for an option (one start in 64 failed so).
    """
    while (cid := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))[0] == "-":
        pass
    return cid


PORT_TRIES = 3
"""Starts of a fresh cluster whose automatically chosen ports were taken before it bound them."""


class KafkaCluster:
    """``nodes`` Apache Kafka KRaft nodes (broker and controller each) on loopback.

    Node ``i`` (1-based) listens on ``ports[i-1]`` for clients and on a free port for the
    controller quorum; ``port`` fixes the first client port and the next ones follow it. Without
    ``data_dir`` a temporary one is made and removed by :meth:`stop`; with one, the log, the
    cluster id and the formatted storage survive :meth:`stop` and a later :meth:`start`.

    ``sasl=True``: the client port is SASL_PLAINTEXT with SCRAM-SHA-512, the standard
    authorizer decides by ACLs (none at first: nobody but the super user may do anything),
    and :data:`SUPER_USER` (``bus``) is the super user, with the password kept in
    ``<data-dir>/bus.password``. ``users`` (name -> password) are more SCRAM users, made when
    the storage is formatted; :meth:`add_user` adds one to a running cluster. Nodes reach each
    other's controllers with SASL PLAIN as ``bus``, so no port takes anonymous requests.
    """

    def __init__(
        self,
        nodes: int = 1,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        data_dir: Path | None = None,
        heap: str = HEAP,
        say: Callable[[str], None] = print,
        sasl: bool = False,
        users: Mapping[str, str] | None = None,
    ) -> None:
        if nodes not in (1, 3):
            raise ConfigurationError(
                f"a local Kafka has 1 or 3 nodes, not {nodes}", reason="config.broker_nodes"
            )
        _check_loopback(host)
        self.nodes = nodes
        self.host = host
        self.heap = heap
        self._say = say
        self._first_port = port
        self._ports: list[int] = []
        self._controller_ports: list[int] = []
        # Absolute: the broker runs in its own folder, and reads the paths it is given there.
        self._data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._own_data_dir = False
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self.sasl = sasl
        if users and not sasl:
            raise ConfigurationError("SCRAM users need sasl=True", reason="config.broker_sasl")
        if users and SUPER_USER in users:
            raise ConfigurationError(
                f"{SUPER_USER!r} is the super user; its password is kept in the data dir",
                reason="config.broker_sasl",
            )
        self._users = dict(users or {})

    # ---- addresses ---------------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        """The client port of each node, in node order; chosen on first start."""
        if not self._ports:
            raise BrokerError("the cluster has no ports until it is started", reason="broker.state")
        return list(self._ports)

    def address(self, node: int) -> str:
        """``host:port`` of one node (1-based)."""
        return f"{self.host}:{self.ports[node - 1]}"

    @property
    def bootstrap(self) -> str:
        """``host:port,...`` of every node, for aiokafka's ``bootstrap_servers``."""
        return ",".join(self.address(n) for n in range(1, self.nodes + 1))

    @property
    def url(self) -> str:
        """The BUS_BROKER form: ``kafka://host:port;host:port...``."""
        return "kafka://" + ";".join(self.address(n) for n in range(1, self.nodes + 1))

    @property
    def data_dir(self) -> Path | None:
        """The folder holding every node's log, config and output; ``None`` before start."""
        return self._data_dir

    def node_dir(self, node: int) -> Path:
        """One node's folder: ``server.properties``, ``data/`` and ``node.log``."""
        assert self._data_dir is not None
        return self._data_dir / f"node-{node}"

    def log_file(self, node: int) -> Path:
        """What one node printed."""
        return self.node_dir(node) / "node.log"

    @property
    def running(self) -> bool:
        """Whether every node's process is alive."""
        return len(self._procs) == self.nodes and all(
            p.poll() is None for p in self._procs.values()
        )

    def node_pid(self, node: int) -> int | None:
        """Process id of one node's JVM."""
        proc = self._procs.get(node)
        return proc.pid if proc is not None else None

    @property
    def pid(self) -> int | None:
        """The first node's JVM: the whole broker of a one-node cluster (CPU sampling)."""
        return self.node_pid(1)

    # ---- configuration ------------------------------------------------------------------------

    def _choose_ports(self) -> None:
        if self._ports:
            return
        if self._first_port is not None:
            self._ports = [self._first_port + i for i in range(self.nodes)]
        else:
            self._ports = [free_port(self.host) for _ in range(self.nodes)]
        self._controller_ports = [free_port(self.host) for _ in range(self.nodes)]

    def properties(self, node: int) -> dict[str, str]:
        """The server properties of one node: shared settings, then its own addresses."""
        voters = ",".join(
            f"{n}@{self.host}:{p}" for n, p in enumerate(self._controller_ports, start=1)
        )
        client = self.address(node)
        listener = "SASL_PLAINTEXT" if self.sasl else "PLAINTEXT"
        return {
            **settings_for(self.nodes),
            **_LOCAL_SETTINGS,
            **(_ONE_NODE_SETTINGS if self.nodes == 1 else {}),
            "process.roles": "broker,controller",
            "node.id": str(node),
            "controller.quorum.voters": voters,
            "listeners": f"{listener}://{client},CONTROLLER://{self.host}:"
            f"{self._controller_ports[node - 1]}",
            "advertised.listeners": f"{listener}://{client}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": listener,
            "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:{listener}",
            "log.dirs": str(self.node_dir(node) / "data"),
            **(self._sasl_properties() if self.sasl else {}),
        }

    def _sasl_properties(self) -> dict[str, str]:
        """Logins and authorisation: SCRAM for clients and between brokers, PLAIN to controllers.

        KRaft cannot check SCRAM on the controller listener (the credentials live in the
        metadata the controllers serve), so nodes log in there with PLAIN, as the super user,
        from credentials in this file.
        """
        user, password = SUPER_USER, self.bus_password
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
        return {
            "sasl.enabled.mechanisms": SASL_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SASL_MECHANISM,
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
                f'{scram} required username="{user}" password="{password}";'
            ),
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": (
                f'{plain} required username="{user}" password="{password}" '
                f'user_{user}="{password}";'
            ),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{user}",
        }

    @property
    def bus_password(self) -> str:
        """The super user's password: made on first use, kept in the data dir (mode 0600)."""
        assert self._data_dir is not None, "the cluster has no data dir until it is started"
        path = self._data_dir / "bus.password"
        if not path.exists():
            self._data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(18))
        return path.read_text().strip()

    def security(self, user: str = SUPER_USER, password: str | None = None) -> dict[str, Any]:
        """aiokafka's connection options for ``user`` (the super user by default)."""
        if not self.sasl:
            return {"security_protocol": "PLAINTEXT"}
        return {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": SASL_MECHANISM,
            "sasl_plain_username": user,
            "sasl_plain_password": self.bus_password if password is None else password,
        }

    def _write_config(self, node: int) -> Path:
        folder = self.node_dir(node)
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "server.properties"
        config.touch(mode=0o600)  # it may hold the super user's password
        config.write_text("".join(f"{k}={v}\n" for k, v in self.properties(node).items()))
        (folder / "log4j2.properties").write_text(_LOG4J)
        return config

    def _java(self, libs: Path, node: int, main: str, *args: str) -> list[str]:
        java = _need("java", "openjdk-17-jre-headless")
        log4j = self.node_dir(node) / "log4j2.properties"
        return [
            java, f"-Xms{self.heap}", f"-Xmx{self.heap}", *_JVM_FLAGS,
            f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*", main, *args,
        ]  # fmt: skip

    def _format(self, libs: Path, node: int, config: Path) -> None:
        """Format a node's storage once; the cluster id is shared by every node, kept on disk."""
        if (self.node_dir(node) / "data" / "meta.properties").exists():
            return
        assert self._data_dir is not None
        id_file = self._data_dir / "cluster.id"
        if not id_file.exists():
            id_file.write_text(_cluster_id())
        users = {SUPER_USER: self.bus_password, **self._users} if self.sasl else {}
        scram = [
            arg
            for name, password in users.items()
            for arg in ("--add-scram", f"{SASL_MECHANISM}=[name={name},password={password}]")
        ]
        command = self._java(
            libs, node, "kafka.tools.StorageTool", "format",
            "-t", id_file.read_text().strip(), "-c", str(config), "--ignore-formatted", *scram,
        )  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BrokerError(
                f"formatting Kafka storage of node {node} failed:\n{result.stdout}{result.stderr}",
                reason="broker.format",
            )

    # ---- Kafka's tools ------------------------------------------------------------------------

    @property
    def tools_dir(self) -> Path:
        """Where ``kafka-acls.sh``, ``kafka-configs.sh`` and ``kafka-topics.sh`` are."""
        assert self._data_dir is not None, "the cluster has no data dir until it is started"
        return self._data_dir / "bin"

    @property
    def admin_config(self) -> Path:
        """Client properties of the super user: the tools' ``--command-config``."""
        return self.tools_dir / "admin.properties"

    def _write_tools(self, libs: Path) -> None:
        """Scripts named like the distribution's, running its main classes from these jars."""
        java = _need("java", "openjdk-17-jre-headless")
        folder = self.tools_dir
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "log4j2.properties").write_text(_LOG4J)
        log4j = folder / "log4j2.properties"
        for script, main in TOOLS.items():
            command = shlex.join([
                java, *_TOOL_FLAGS, f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*", main
            ])  # fmt: skip
            path = folder / script
            path.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
            path.chmod(0o755)
        admin = self.admin_config
        admin.touch(mode=0o600)
        lines = ["security.protocol=" + ("SASL_PLAINTEXT" if self.sasl else "PLAINTEXT")]
        if self.sasl:
            module = "org.apache.kafka.common.security.scram.ScramLoginModule"
            lines += [
                f"sasl.mechanism={SASL_MECHANISM}",
                f'sasl.jaas.config={module} required username="{SUPER_USER}" '
                f'password="{self.bus_password}";',
            ]
        admin.write_text("".join(line + "\n" for line in lines))

    def tool(self, script: str, *args: str, timeout: float = 120.0) -> str:
        """Run one of Kafka's tools against this cluster as the super user; its output.

        ``--bootstrap-server`` and ``--command-config`` are added; a failure is a
        :class:`BrokerError` with what the tool printed.
        """
        if script not in TOOLS:
            raise ConfigurationError(f"no tool {script!r}; known: {', '.join(TOOLS)}")
        command = [
            str(self.tools_dir / script), "--bootstrap-server", self.bootstrap,
            "--command-config", str(self.admin_config), *args,
        ]  # fmt: skip
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise BrokerError(
                f"{script} {' '.join(args)} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}",
                reason="broker.tool",
            )
        return result.stdout

    def add_user(self, name: str, password: str) -> None:
        """Add (or change) a SCRAM user on the running cluster, as an operator would."""
        if not self.sasl:
            raise ConfigurationError("users need sasl=True", reason="config.broker_sasl")
        self.tool(
            "kafka-configs.sh", "--alter", "--entity-type", "users", "--entity-name", name,
            "--add-config", f"{SASL_MECHANISM}=[password={password}]",
        )  # fmt: skip

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Start every node; return once each answers and the cluster counts all its brokers."""
        libs = kafka_jars(self._say)
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="bus-kafka-"))
            self._own_data_dir = True
        self._data_dir.mkdir(parents=True, exist_ok=True)
        fresh = not any(self.node_dir(n).exists() for n in range(1, self.nodes + 1))
        for attempt in range(1, PORT_TRIES + 1):
            self._choose_ports()
            configs = {n: self._write_config(n) for n in range(1, self.nodes + 1)}
            self._write_tools(libs)
            for node, config in configs.items():
                self._format(libs, node, config)
            for node in configs:
                self._launch(libs, node)
            if self._finalizer is None:
                self._finalizer = weakref.finalize(
                    self, _abandon, self._procs, self._data_dir if self._own_data_dir else None
                )
            try:
                for node in configs:
                    self.wait_node(node, timeout)
                return
            except BrokerError as err:
                self._terminate_all(5.0)
                # A port chosen free was taken by another process before a node bound it (a
                # busy machine starting many): a new cluster starts again on other ports.
                taken = "Address already in use" in err.message
                if not (taken and fresh and self._first_port is None and attempt < PORT_TRIES):
                    raise
                self._say(f"a port was taken meanwhile; starting Kafka again on others "
                          f"(try {attempt + 1} of {PORT_TRIES})")  # fmt: skip
                for n in range(1, self.nodes + 1):
                    shutil.rmtree(self.node_dir(n), ignore_errors=True)
                self._ports, self._controller_ports = [], []
            except BaseException:
                self._terminate_all(5.0)
                raise

    def _launch(self, libs: Path, node: int) -> None:
        config = self.node_dir(node) / "server.properties"
        with self.log_file(node).open("ab") as log:
            log.write(f"--- bus: starting node {node} on {self.address(node)}\n".encode())
            log.flush()
            self._procs[node] = subprocess.Popen(
                self._java(libs, node, "kafka.Kafka", str(config)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.node_dir(node),
                start_new_session=True,
            )

    def wait_node(self, node: int, timeout: float = 90.0) -> None:
        """Wait until ``node`` answers Metadata listing every node of the cluster."""
        proc = self._procs[node]
        deadline = time.monotonic() + timeout
        last = "no attempt made"
        while True:
            if proc.poll() is not None:
                raise BrokerError(
                    f"Kafka node {node} exited with code {proc.returncode}; "
                    f"log {self.log_file(node)}:\n{self.log_tail(node)}",
                    reason="broker.exited",
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"Kafka node {node} on {self.address(node)} not ready within {timeout:g} s "
                    f"(last: {last}); log {self.log_file(node)}:\n{self.log_tail(node)}",
                    reason="broker.timeout",
                )
            try:
                brokers = _run(
                    probe(self.address(node), min(PROBE_TIMEOUT, remaining), self.security())
                )
            except BrokerError as err:
                last = err.message
            else:
                if len(brokers) >= self.nodes:
                    return
                last = f"{len(brokers)} of {self.nodes} brokers registered"
            time.sleep(POLL_INTERVAL)

    def kill(self, node: int) -> None:
        """SIGKILL one node: a crash, for fail-over tests."""
        proc = self._procs.pop(node, None)
        if proc is not None:
            terminate_group(proc, 0)

    def stop_node(self, node: int, timeout: float = 30.0) -> None:
        """SIGTERM one node (a controlled shutdown), SIGKILL after ``timeout``."""
        proc = self._procs.pop(node, None)
        if proc is not None:
            terminate_group(proc, timeout)

    def start_node(self, node: int, timeout: float = 90.0) -> None:
        """Start one stopped node again on its ports and storage, and wait until it serves."""
        if node in self._procs and self._procs[node].poll() is None:
            raise BrokerError(f"Kafka node {node} is already running", reason="broker.state")
        self._launch(kafka_jars(self._say), node)
        self.wait_node(node, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node (SIGTERM, SIGKILL after ``timeout``); a temporary data dir goes too."""
        self._terminate_all(timeout)
        if self._own_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None
            self._own_data_dir = False

    def _terminate_all(self, timeout: float) -> None:
        # All at once: stopped one by one, the last nodes wait for a quorum that is leaving.
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self._procs.values():
            terminate_group(proc, timeout)
        self._procs.clear()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def restart(self, timeout: float = 90.0, *, stop_timeout: float = 30.0) -> None:
        """Stop every node and start them again: same ports, same data."""
        self._terminate_all(stop_timeout)
        self.start(timeout)

    def log_tail(self, node: int, lines: int = 25) -> str:
        """The last lines one node printed."""
        path = self.log_file(node)
        if not path.exists():
            return "(no log)"
        text = path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"

    def __enter__(self) -> KafkaCluster:
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
        where = ",".join(map(str, self._ports)) or "-"
        return f"<KafkaCluster {self.nodes} node(s) {self.host}:{where}>"


def _abandon(procs: dict[int, subprocess.Popen[bytes]], temp_dir: Path | None) -> None:
    """Finalizer for a cluster nobody stopped: its nodes are in their own sessions."""
    for proc in procs.values():
        terminate_group(proc, 0)
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)


#: The brokers a developer can run here; ``kafka`` is the reference, the others need only PyPI.
LOCAL_ENGINES = ("kafka", "noida", "tansu")
LocalBroker = EmbeddedBroker | KafkaCluster


def local_broker(
    engine: str,
    *,
    nodes: int = 1,
    port: int | None = None,
    data_dir: Path | None = None,
    say: Callable[[str], None] = print,
    sasl: bool = False,
) -> LocalBroker:
    """A broker for the demo, the tests or the benchmarks, not yet started."""
    if engine == "kafka":
        return KafkaCluster(nodes, port=port, data_dir=data_dir, say=say, sasl=sasl)
    if sasl:
        raise ConfigurationError(
            f"--sasl needs the kafka engine; {engine} has no authentication",
            reason="config.broker_sasl",
        )
    if nodes != 1:
        raise ConfigurationError(
            f"--nodes {nodes} needs the kafka engine; {engine} runs one node",
            reason="config.broker_nodes",
        )
    if engine not in ENGINES:
        raise ConfigurationError(
            f"unknown broker engine {engine!r}; choose one of {', '.join(LOCAL_ENGINES)}",
            reason="config.broker_engine",
        )
    return EmbeddedBroker(engine, port=port, data_dir=data_dir)  # type: ignore[arg-type]


__all__ = [
    "HEAP", "LOCAL_ENGINES", "SASL_MECHANISM", "SUPER_USER", "TOOLS", "KafkaCluster",
    "LocalBroker", "cache_dir", "kafka_jars", "local_broker",
]  # fmt: skip
