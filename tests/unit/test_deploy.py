"""The deployment files agree with the code: commands exist, variables are real settings.

No container engine or cluster runs here, so docker-compose.yml and deploy/k8s are checked as
data: a typo in a command, an option, a ``BUS_*`` variable no setting reads, or a probe on a
port the container does not open would otherwise only show in production.
"""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.main import get_command

from bus.cli import app
from bus.settings import Settings
from bus.streaming.kafka_settings import CLUSTER_SETTINGS, KAFKA_VERSION, compose_env, settings_for

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
SETTINGS = {f"BUS_{name.upper()}" for name in Settings.model_fields}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def kafka_services() -> dict[str, dict[str, Any]]:
    """The compose services that run Apache Kafka's image."""
    services = compose()["services"]
    return {n: s for n, s in services.items() if s.get("image", "").startswith("apache/kafka:")}


@functools.cache
def cli() -> Any:
    """The ``bus`` command tree, built once (typer builds it anew on every call)."""
    return get_command(app)


def check_bus_command(words: list[str], where: str, *, parse: bool = True) -> None:
    """``bus WORDS`` names a command and (with ``parse``) its arguments and options parse.

    Nothing runs: typer's parser only reads the words, as the shell would hand them over.
    """
    cmd = cli()
    rest = list(words)
    while hasattr(cmd, "commands") and rest and not rest[0].startswith("-"):
        word = rest.pop(0)
        assert word in cmd.commands, f"{where}: `bus {' '.join(words)}` has no {word!r}"
        cmd = cmd.commands[word]
    if hasattr(cmd, "commands"):  # a group runs only if it does something by itself
        assert cmd.invoke_without_command, f"{where}: `bus {' '.join(words)}` is a group"
    if not parse:
        return
    try:
        cmd.make_context(f"bus {' '.join(words)}", rest)
    except typer.TyperException as exc:  # typer's click: unknown option, missing argument
        pytest.fail(f"{where}: `bus {' '.join(words)}`: {exc}")


def bus_calls(service: dict[str, Any]) -> list[list[str]]:
    """The ``bus`` command lines a compose service runs (the image's entrypoint is ``bus``)."""
    command = service.get("command") or []
    if "entrypoint" not in service:
        return [command]
    assert service["entrypoint"][0] == "sh", "a bus service runs bus, or a shell script"
    env = service.get("environment") or {}
    script = command[-1].replace("$$", "$")
    script = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group()), script)
    calls = []
    for line in script.splitlines():
        for part in re.split(r"\|\||&&|;", line):
            words = shlex.split(part)
            if words[:1] == ["exec"]:
                words = words[1:]
            if words[:1] == ["bus"]:
                calls.append(words[1:])
    return calls


def test_every_bus_command_in_compose_exists() -> None:
    services = compose()["services"]
    bus_services = {n: s for n, s in services.items() if s.get("build")}
    assert {"topics", "worker", "gateway", "signing-key", "connect"} <= set(bus_services)
    for name, service in bus_services.items():
        calls = bus_calls(service)
        assert calls, f"{name}: runs no bus command"
        for words in calls:
            check_bus_command(words, name)


def test_command_check_catches_mistakes() -> None:
    for words in (
        ["gateway", "serve"],
        ["gateway", "run", "--bind", "x"],
        ["trace"],
        ["topics"],
        ["deadletters", "--reasons", "x"],
    ):
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            check_bus_command(words, "self-check")
    check_bus_command(["trace", "91320583MA1XXXXXX", "-b", "kafka://k:9092"], "self-check")
    check_bus_command(["deadletters", "--reason", "schema."], "self-check")


def test_every_bus_variable_in_compose_is_a_setting() -> None:
    for name, service in compose()["services"].items():
        env = service.get("environment") or {}
        unknown = {k for k in env if k.startswith("BUS_")} - SETTINGS
        assert not unknown, f"{name}: {unknown} are not settings"


def test_compose_broker_setting_parses_to_three_brokers() -> None:
    env = compose()["services"]["worker"]["environment"]
    s = Settings(broker=env["BUS_BROKER"])
    assert s.bootstrap_servers == ["kafka-1:9092", "kafka-2:9092", "kafka-3:9092"]
    assert int(env["BUS_REPLICATION_FACTOR"]) == 3


def test_kafka_is_replicated_three_ways_with_two_in_sync() -> None:
    assert CLUSTER_SETTINGS["default.replication.factor"] == "3"
    assert CLUSTER_SETTINGS["min.insync.replicas"] == "2"
    brokers = kafka_services()
    assert len(brokers) == 3
    for b in brokers.values():
        assert str(b["environment"]["KAFKA_MIN_INSYNC_REPLICAS"]) == "2"
        assert str(b["environment"]["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == "3"


def test_compose_settings_are_valid_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in compose()["services"].items():
        env = service.get("environment") or {}
        with monkeypatch.context() as m:
            for key, value in env.items():
                if key.startswith("BUS_"):
                    m.setenv(key, str(value))
            Settings()  # raises on a value the setting refuses
        assert name


def test_workers_share_one_signing_key_that_the_gateway_can_verify() -> None:
    services = compose()["services"]
    worker, gateway, keygen = services["worker"], services["gateway"], services["signing-key"]
    key_file = worker["environment"]["BUS_SIGNING_KEY_FILE"]
    assert keygen["environment"]["BUS_SIGNING_KEY_FILE"] == key_file
    (call,) = [c for c in bus_calls(keygen) if c[:2] == ["certificate", "keygen"]]
    assert call[call.index("--out") + 1] == key_file
    assert call[call.index("--key-id") + 1] == worker["environment"]["BUS_SIGNING_KEY_ID"]
    volume = Path(key_file).parent.as_posix()
    assert f"signing:{volume}:ro" in worker["volumes"]
    assert f"signing:{volume}" in keygen["volumes"]
    # the public key goes to <gateway data dir>/keys, where the gateway's verifier looks
    gateway_volume = next(v for v in gateway["volumes"] if v.startswith("gateway:"))
    data_dir = gateway_volume.split(":")[1]
    assert f"gateway:{data_dir}" in keygen["volumes"]
    assert f'cp "$$BUS_SIGNING_KEY_FILE.pub" {data_dir}/keys/' in keygen["command"][0]
    for name in ("worker", "gateway"):
        assert services[name]["depends_on"]["signing-key"] == {
            "condition": "service_completed_successfully"
        }


def test_compose_connector_is_configured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from connectors import registry

    data = compose()
    connect = data["services"]["connect"]
    target = connect["environment"]["BUS_CONNECTORS_FILE"]
    (mount,) = connect["configs"]
    assert mount["target"] == target
    # compose turns $$ into $; `bus connect` then fills ${NAME} from the environment
    text = data["configs"][mount["source"]]["content"].replace("$$", "$")
    for var in re.findall(r"\$\{(\w+)\}", text):
        assert var in connect["environment"], f"{var} is not set for the connector"
        monkeypatch.setenv(var, "secret")
    path = tmp_path / "connectors.yaml"
    path.write_text(text)
    name = connect["command"][1]
    entry = registry.find(path, name)  # the name the service runs is in the file
    assert entry.kind in registry.KINDS
    module = registry.KINDS[entry.kind].partition(":")[0]
    try:
        cls = registry.connector_class(entry.kind)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        pytest.skip(f"the {entry.kind} connector is not in this tree yet")
    cls.Options.model_validate(entry.options)


def test_compose_health_checks_use_the_processes_ports() -> None:
    services = compose()["services"]
    worker_url = services["worker"]["healthcheck"]["test"][-1]
    assert f":{Settings().web_port}/'" in worker_url
    gateway = services["gateway"]
    port = gateway["command"][gateway["command"].index("--port") + 1]
    assert f":{port}/healthz'" in gateway["healthcheck"]["test"][-1]


def test_compose_bind_mounts_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"


def compose_text() -> str:
    return (ROOT / "docker-compose.yml").read_text()


def compose_variables() -> set[str]:
    """Every variable compose reads (``${NAME...}``, ``$NAME``), not ``$$`` escapes or comments."""
    text = "\n".join(x for x in compose_text().splitlines() if not x.lstrip().startswith("#"))
    return set(re.findall(r"(?<!\$)\$\{(\w+)", text)) | set(re.findall(r"(?<!\$)\$(\w+)", text))


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(x.split("=", 1) for x in lines if x.strip() and not x.startswith("#"))


def with_defaults(value: str) -> str:
    """A compose value as it reads without a .env: ``${NAME:-default}`` becomes ``default``."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", value)


def test_every_variable_compose_reads_is_in_env_example_with_a_comment() -> None:
    variables = compose_variables()
    assert {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} <= variables  # the reader works
    assert "CASES_DB_PASSWORD" not in variables  # $${...} is for bus connect, not compose
    example = env_example()
    assert set(example) == variables, set(example) ^ variables
    text = (ROOT / ".env.example").read_text()
    for name in variables:  # each with a comment right above it saying what it is for
        before = text.split(f"\n{name}=")[0].rstrip().splitlines()
        assert before, name
        assert before[-1].startswith("#"), f"{name} has no comment"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_published_ports_listen_on_loopback_unless_told_otherwise() -> None:
    example = env_example()
    published = 0
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            published += 1
            parts = with_defaults(str(port)).split(":")
            assert len(parts) == 3, f"{name}: {port} listens on every interface"
            assert parts[0] == "127.0.0.1", f"{name}: {port} is not on loopback by default"
            for var in re.findall(r"\$\{(\w+)", str(port)):
                assert example[var] == "127.0.0.1", f"{name}: .env.example opens {var}"
    assert published >= 3  # gateway, Prometheus, Grafana


def test_postgres_password_is_needed_only_with_the_connectors_profile() -> None:
    services = compose()["services"]
    using = {n for n, s in services.items() if "POSTGRES_PASSWORD" in str(s.get("environment"))}
    assert using == {"postgres", "connect"}
    for name in using:
        assert "connectors" in services[name].get("profiles", []), name
    # compose reads the variables of every service, profile or not: `:?` would stop a plain up
    assert "${POSTGRES_PASSWORD:?" not in compose_text()
    for name, service in services.items():
        if "postgres" in service.get("depends_on", {}):
            assert "connectors" in service.get("profiles", []), name


def test_the_postgres_init_sql_creates_the_outbox_the_connector_reads() -> None:
    from psycopg.conninfo import conninfo_to_dict

    from connectors.outbox import OutboxOptions, outbox_ddl

    data = compose()
    postgres = data["services"]["postgres"]
    init = next(v for v in postgres["volumes"] if ":/docker-entrypoint-initdb.d" in v)
    files = sorted((ROOT / init.split(":")[0]).glob("*.sql"))
    assert files, "no init SQL"
    sql = "".join(f.read_text() for f in files)
    (schema, table), *more = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)", sql)
    assert not more
    assert table == OutboxOptions.model_fields["table"].default == "bus_outbox"
    text = data["configs"]["connectors"]["content"].replace("$$", "$")
    (entry,) = [e for e in yaml.safe_load(text)["connectors"] if e["kind"] == "outbox"]
    options = OutboxOptions.model_validate(entry["options"])
    assert (options.schema_name, options.table) == (schema, table)
    (only,) = files
    header, body = only.read_text().split("\n\n", 1)
    assert all(x.startswith("-- ") for x in header.splitlines())
    assert body == outbox_ddl(schema, table)  # the DDL the outbox docs print, exactly
    dsn = conninfo_to_dict(options.dsn.get_secret_value())
    env = postgres["environment"]
    assert (dsn["dbname"], dsn["user"]) == (env["POSTGRES_DB"], env["POSTGRES_USER"])


# --- Kubernetes

KNOWN_KINDS = {
    ("v1", "Namespace"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"),
    ("apps/v1", "Deployment"),
    ("batch/v1", "Job"),
    ("policy/v1", "PodDisruptionBudget"),
}
CONTAINER_KEYS = {
    "name", "image", "args", "command", "env", "envFrom", "ports", "startupProbe",
    "livenessProbe", "readinessProbe", "resources", "securityContext", "volumeMounts",
}  # fmt: skip


def k8s_docs(name: str | None = None) -> list[dict[str, Any]]:
    files = [K8S / name] if name else sorted(set(K8S.glob("*.yaml")) - {K8S / "kustomization.yaml"})
    return [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]


def applied() -> list[dict[str, Any]]:
    """What ``kubectl apply -k deploy/k8s`` applies (the Secrets are made by hand)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [d for f in kustomization["resources"] for d in k8s_docs(f)]


def pod_specs() -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in applied()
        if d["kind"] in ("Deployment", "Job")
    }


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    docs = applied() + k8s_docs("secret.example.yaml")
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_every_k8s_document_is_a_known_kind() -> None:
    docs = k8s_docs()
    assert docs
    for d in docs:
        assert (d["apiVersion"], d["kind"]) in KNOWN_KINDS, d.get("metadata")
        assert d["metadata"]["name"]


def test_kustomization_applies_everything_but_the_example_secrets() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "bus"
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml"}
    assert {"Deployment", "Service", "ConfigMap", "Job"} <= {d["kind"] for d in applied()}
    images = {i["name"] for i in kustomization["images"]}
    for spec in pod_specs().values():
        for c in spec["containers"]:
            assert c["image"] in images, c["name"]


def test_configmap_holds_only_real_settings_with_valid_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = of_kind("ConfigMap")["bus-settings"]["data"]
    assert set(data) <= SETTINGS, set(data) - SETTINGS
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.replication_factor == 3
    assert s.web_host == "0.0.0.0"  # probes and Prometheus come from outside the pod
    assert s.kafka()["security_protocol"] == "SASL_SSL"


def test_every_k8s_container_runs_a_bus_command_with_real_settings() -> None:
    configmaps, secrets = of_kind("ConfigMap"), of_kind("Secret")
    for name, spec in pod_specs().items():
        for c in spec["containers"]:
            assert set(c) <= CONTAINER_KEYS, f"{name}: {set(c) - CONTAINER_KEYS}"
            assert "command" not in c, f"{name}: the image's entrypoint is bus; use args"
            check_bus_command(c["args"], name)
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps
            for var in c.get("env", []):
                assert var["name"] in SETTINGS, f"{name}: {var['name']} is not a setting"
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["stringData"], ref
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                secret = secrets[volume["secret"]["secretName"]]
                for item in volume["secret"].get("items", []):
                    assert item["key"] in secret["stringData"], item


def test_probes_and_scraping_use_ports_the_containers_open() -> None:
    settings_data = of_kind("ConfigMap")["bus-settings"]["data"]
    deployments = {n: d for n, d in of_kind("Deployment").items()}
    for name, d in deployments.items():
        template = d["spec"]["template"]
        assert (
            d["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        )
        (c,) = template["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c[kind]
            handler = probe.get("httpGet") or probe.get("tcpSocket")
            assert handler["port"] in ports or handler["port"] in ports.values(), (name, kind)
        annotations = template["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            port = int(annotations["prometheus.io/port"])
            named = {v: k for k, v in ports.items()}
            assert named.get(port) in ("metrics", "http"), f"{name}: scraped port not named"
    worker = deployments["bus-worker"]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports["web"] == int(settings_data["BUS_WEB_PORT"])
    assert ports["metrics"] == int(settings_data["BUS_METRICS_PORT"])
    assert worker["livenessProbe"]["httpGet"] == {"path": "/", "port": "web"}
    replicas = deployments["bus-worker"]["spec"]["replicas"]
    assert 2 <= replicas <= int(settings_data["BUS_PARTITIONS"])


def test_gateway_probe_and_service_match_the_gateway() -> None:
    from bus.edge.gateway.app import create_app

    routes = set(create_app(Settings()).openapi()["paths"])
    d = of_kind("Deployment")["bus-gateway"]
    (c,) = d["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] in routes
    port = int(c["args"][c["args"].index("--port") + 1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == port
    service = of_kind("Service")["bus-gateway"]
    assert (
        service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    )
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    # the verifier reads <BUS_DATA_DIR>/keys: the public keys are mounted there
    data_dir = of_kind("ConfigMap")["bus-settings"]["data"]["BUS_DATA_DIR"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["public-keys"] == f"{data_dir}/keys"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_manifests() -> None:
    run = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    rendered = [d for d in yaml.safe_load_all(run.stdout) if d]
    assert len(rendered) == len(applied())
    assert all(
        d["metadata"].get("namespace") == "bus" for d in rendered if d["kind"] != "Namespace"
    )


def doc_commands(text: str) -> list[tuple[list[str], bool]]:
    """``bus ...`` in a document: command lines of code blocks (whole), inline code (names)."""
    found = [(m.group(1), False) for m in re.finditer(r"`(bus [^`]+)`", text)]
    for block in re.findall(r"^```\w*\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            if m := re.search(r"(?:^|-- |exec worker )(bus .*)", line):
                found.append((m.group(1), True))
    return [
        (shlex.split(line.split(" #")[0].split("&&")[0].split("|")[0])[1:], whole)
        for line, whole in found
    ]


def test_every_command_in_the_operations_guide_exists() -> None:
    calls = doc_commands((ROOT / "docs/operations.md").read_text(encoding="utf-8"))
    assert len(calls) > 20  # the reader works
    assert sum(whole for _, whole in calls) >= 5
    for words, whole in calls:
        check_bus_command(words, "docs/operations.md", parse=whole)


# --- One Kafka: the tests' broker (bus/dev/kafka_local.py), compose and Kubernetes run the same
# version with the same broker settings, those of bus/streaming/kafka_settings.py.

STRIMZI = K8S / "kafka"
#: What a compose Kafka service sets besides CLUSTER_SETTINGS: who it is, where it listens,
#: where it keeps its log.
KAFKA_NODE_ENV = {
    "KAFKA_NODE_ID", "KAFKA_PROCESS_ROLES", "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_LISTENERS",
    "KAFKA_ADVERTISED_LISTENERS", "KAFKA_CONTROLLER_LISTENER_NAMES",
    "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "KAFKA_INTER_BROKER_LISTENER_NAME", "KAFKA_LOG_DIRS",
}  # fmt: skip


def as_property(value: Any) -> str:
    """A YAML value as Kafka reads it in a properties file (``false``, not ``False``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def strimzi_docs() -> list[dict[str, Any]]:
    """What ``kubectl apply -k deploy/k8s/kafka`` applies."""
    kustomization = yaml.safe_load((STRIMZI / "kustomization.yaml").read_text())
    return [
        d
        for f in kustomization["resources"]
        for d in yaml.safe_load_all((STRIMZI / f).read_text())
        if d
    ]


def strimzi(kind: str) -> list[dict[str, Any]]:
    docs = [d for d in strimzi_docs() if d["kind"] == kind]
    for d in docs:
        assert d["apiVersion"] == "kafka.strimzi.io/v1beta2", d["metadata"]["name"]
    return docs


def strimzi_cluster() -> dict[str, Any]:
    (kafka,) = strimzi("Kafka")
    return kafka


def test_kafka_version_is_the_same_everywhere() -> None:
    brokers = kafka_services()
    assert len(brokers) == 3
    for name, service in brokers.items():
        assert service["image"] == f"apache/kafka:{KAFKA_VERSION}", name
    assert str(strimzi_cluster()["spec"]["kafka"]["version"]) == KAFKA_VERSION
    pom = ROOT / "bus/data/kafka/pom.xml"  # the jars of the tests' broker
    if pom.exists():
        assert f"<kafka.version>{KAFKA_VERSION}</kafka.version>" in pom.read_text()


def test_compose_kafka_runs_exactly_the_cluster_settings() -> None:
    expected = compose_env(CLUSTER_SETTINGS)
    for name, service in kafka_services().items():
        env = service["environment"]
        for key, value in expected.items():
            assert key in env, f"{name}: {key} is not set"
            assert as_property(env[key]) == value, f"{name}: {key}={env[key]}, not {value}"
        # a broker setting only compose has would drift from the tests and Kubernetes
        extra = {k for k in env if k.startswith("KAFKA_")} - set(expected) - KAFKA_NODE_ENV
        assert not extra, f"{name}: {extra} are not in bus/streaming/kafka_settings.py"


def test_compose_kafka_keeps_its_log_in_its_own_volume() -> None:
    data = compose()
    seen: set[str] = set()
    for name, service in kafka_services().items():
        mounts = dict(v.split(":")[:2] for v in service["volumes"])
        named = {source: target for source, target in mounts.items() if source in data["volumes"]}
        for log_dir in service["environment"]["KAFKA_LOG_DIRS"].split(","):
            volume = next(
                (s for s, target in named.items() if Path(log_dir).is_relative_to(target)), None
            )
            assert volume, f"{name}: KAFKA_LOG_DIRS {log_dir} is in no volume (lost on recreate)"
            assert volume not in seen, f"{name}: shares volume {volume} with another broker"
            seen.add(volume)


def test_strimzi_cluster_runs_exactly_the_cluster_settings() -> None:
    kafka = strimzi_cluster()
    config = {k: as_property(v) for k, v in kafka["spec"]["kafka"]["config"].items()}
    assert config == CLUSTER_SETTINGS
    (pool,) = strimzi("KafkaNodePool")
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}  # KRaft, no ZooKeeper
    assert pool["spec"]["replicas"] == 3
    assert settings_for(pool["spec"]["replicas"]) == config
    assert pool["spec"]["storage"]["type"] == "persistent-claim"
    assert pool["spec"]["storage"]["deleteClaim"] is False


def test_configmap_points_at_the_strimzi_bootstrap_service() -> None:
    kafka = strimzi_cluster()
    namespace = yaml.safe_load((STRIMZI / "kustomization.yaml").read_text())["namespace"]
    data = of_kind("ConfigMap")["bus-settings"]["data"]
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    host = f"{kafka['metadata']['name']}-kafka-bootstrap.{namespace}.svc"
    assert data["BUS_BROKER"] == f"kafka://{host}:{listener['port']}"
    assert data["BUS_SECURITY_PROTOCOL"] == ("SASL_SSL" if listener["tls"] else "SASL_PLAINTEXT")
    assert listener["authentication"]["type"] == data["BUS_SASL_MECHANISM"].lower()
    assert data["BUS_REPLICATION_FACTOR"] == CLUSTER_SETTINGS["default.replication.factor"]


def test_strimzi_users_are_the_principals_the_pods_log_in_as() -> None:
    cluster = strimzi_cluster()["metadata"]["name"]
    prefix = of_kind("ConfigMap")["bus-settings"]["data"]["BUS_TOPIC_PREFIX"]
    logins = set()
    for spec in pod_specs().values():
        for c in spec["containers"]:
            env = {v["name"]: v for v in c.get("env", [])}
            if "BUS_SASL_USERNAME" in env:
                ref = env["BUS_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
                logins.add((env["BUS_SASL_USERNAME"]["value"], ref["name"], ref["key"]))
    users = set()
    for user in strimzi("KafkaUser"):
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == cluster
        auth = user["spec"]["authentication"]
        assert auth["type"] == "scram-sha-512"
        ref = auth["password"]["valueFrom"]["secretKeyRef"]
        users.add((user["metadata"]["name"], ref["name"], ref["key"]))
        for acl in user["spec"]["authorization"]["acls"]:
            if acl["resource"]["type"] in ("topic", "group"):
                assert acl["resource"]["name"].startswith(prefix), acl
    assert logins
    assert users == logins


def test_settings_for_scales_replication_to_the_nodes() -> None:
    assert settings_for(3) == CLUSTER_SETTINGS
    assert settings_for(5) == CLUSTER_SETTINGS  # more brokers, the same replication
    one = settings_for(1)
    replication = {k for k in CLUSTER_SETTINGS if k.endswith(".replication.factor")}
    min_isr = {k for k in CLUSTER_SETTINGS if k.endswith((".min.isr", "min.insync.replicas"))}
    assert len(replication) == 4
    assert len(min_isr) == 3
    assert {one[k] for k in replication | min_isr} == {"1"}
    assert {k: v for k, v in one.items() if k not in replication | min_isr} == {
        k: v for k, v in CLUSTER_SETTINGS.items() if k not in replication | min_isr
    }
    two = settings_for(2)
    assert two["default.replication.factor"] == "2"
    assert two["min.insync.replicas"] == "1"
    one["min.insync.replicas"] = "9"  # a copy each time
    assert settings_for(1)["min.insync.replicas"] == "1"
    assert CLUSTER_SETTINGS["min.insync.replicas"] == "2"
    with pytest.raises(ValueError, match="at least 1"):
        settings_for(0)


def image_property(env_name: str) -> str:
    """The property the apache/kafka image makes of ``KAFKA_...``: _ . , __ _ , ___ -."""
    name = env_name.removeprefix("KAFKA_").lower()
    return re.sub(r"_+", lambda m: {1: ".", 2: "_", 3: "-"}[len(m.group())], name)


def test_compose_env_names_variables_as_the_image_reads_them() -> None:
    assert compose_env({"log.dirs": "/d", "min.insync.replicas": "2"}) == {
        "KAFKA_LOG_DIRS": "/d",
        "KAFKA_MIN_INSYNC_REPLICAS": "2",
    }
    assert compose_env({"a-b.c_d": "x"}) == {"KAFKA_A___B_C__D": "x"}
    for prop in [*CLUSTER_SETTINGS, "a-b.c_d", "listener.name.sasl_ssl.scram-sha-512.x"]:
        (env_name,) = compose_env({prop: ""})
        assert image_property(env_name) == prop
