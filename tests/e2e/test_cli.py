"""The ``bus`` command as people and scripts use it: real processes, real broker.

Each test runs the installed ``bus`` entry point (through ``python -m bus.cli``) with the
settings in ``BUS_*`` variables, and checks what it prints and its exit status.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from bus.dev.brokers import free_port
from bus.dev.processes import WorkerProcess, settings_env
from bus.dev.samples import penalties
from bus.settings import Settings
from bus.streaming.client import topic_partitions
from bus.streaming.codec import EventCodec

pytestmark = pytest.mark.e2e
T = TypeVar("T")


def bus(*args: str, settings: Settings | None = None, stdin: str | None = None,
        timeout: float = 120, env: dict[str, str] | None = None, cwd: Path | None = None,
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = {**os.environ, "COLUMNS": "200", **(settings_env(settings) if settings else {}),
           **(env or {})}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", *args],
        env=env, input=stdin, capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )  # fmt: skip


def _wait_for(check: Callable[[], T], seconds: float = 60) -> T:
    """``check()`` once it is truthy; polls (the worker is asynchronous), gives up after a while."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


def _bus_until(
    done: Callable[[subprocess.CompletedProcess[str]], bool], *args: str, settings: Settings
) -> subprocess.CompletedProcess[str]:
    """``bus(*args)`` again until ``done`` holds for its result (or a minute has gone by), and
    that last result: the worker is asynchronous."""
    deadline = time.monotonic() + 60
    while True:
        result = bus(*args, settings=settings)
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


@pytest.mark.parametrize(
    "command",
    [[], ["worker"], ["publish"], ["deadletters"], ["topics", "create"], ["topics", "acls"],
     ["broker"], ["demo"],
     ["schemas", "check"], ["schemas", "export"], ["settings"], ["certificate", "verify"],
     ["certificate", "export"],
     ["certificate", "list"], ["report", "verify"], ["report", "list"], ["report", "export"],
     ["decision", "verify"],
     ["trace"], ["deadletters", "replay"],
     ["deadletters", "show"], ["status"], ["import"], ["connect"], ["tasks"], ["inbox"],
     ["gateway", "run"], ["gateway", "keys", "list"], ["certificate", "keygen"]],
)  # fmt: skip
def test_every_command_has_help(command: list[str]) -> None:
    result = bus(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert "<bool>" not in result.stdout  # a flag takes no value; none is shown


def test_help_shows_flags_without_a_value() -> None:
    demo = bus("demo", "--help").stdout
    assert re.search(r"--keep-running\s+--no-keep-running\s+Keep broker", demo), demo
    dead = bus("deadletters", "--help").stdout
    assert re.search(r"--json\s+JSON lines for scripts", dead), dead
    assert re.search(r"--limit\s+<int>", dead), dead  # options with a value keep their type


def test_version() -> None:
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    expected = tomllib.loads(pyproject.read_text())["project"]["version"]
    result = bus("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"bus {expected}"


@pytest.mark.parametrize(
    "command",
    [["settings"], ["worker"], ["status"], ["publish", "-"], ["connect", "--list"],
     ["import", "events.jsonl"], ["gateway", "run"]],
)  # fmt: skip
def test_invalid_settings_name_the_variables_to_fix(command: list[str], tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text("{}\n")
    env = {**os.environ, "BUS_PARTITIONS": "0", "BUS_BATCH_SIZE": "many"}
    result = subprocess.run(
        [sys.executable, "-m", "bus.cli", *command], env=env, cwd=tmp_path, input="{}\n",
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "BUS_PARTITIONS: Input should be greater than or equal to 1" in result.stderr
    assert "BUS_BATCH_SIZE: Input should be a valid integer" in result.stderr


@pytest.mark.parametrize(
    ("command", "paragraph"),
    [(["import"], "if any row is wrong nothing is published"),
     (["deadletters", "replay"], "could not deliver (stage connector.*) go back")],
)  # fmt: skip
def test_help_paragraphs_are_reflowed_not_broken_where_the_source_wraps(
    command: list[str], paragraph: str
) -> None:
    result = bus(*command, "--help")  # 200 columns: each paragraph fits on a line or two
    assert result.returncode == 0, result.stderr
    assert any(paragraph in line for line in result.stdout.splitlines()), result.stdout


@pytest.mark.parametrize(
    "command",
    [["publish", "-"], ["deadletters"], ["deadletters", "replay", "--reason", "schema."],
     ["trace", "91320583HE0CTA587R"], ["certificate", "list"], ["topics", "create"],
     ["status"], ["tasks"], ["inbox", "ks.tax"]],
)  # fmt: skip
def test_no_broker_is_an_error_message_not_a_traceback(command: list[str]) -> None:
    closed = free_port()
    env = {**os.environ, "COLUMNS": "200", "BUS_BROKER": f"kafka://127.0.0.1:{closed}"}
    result = subprocess.run(
        [sys.executable, "-m", "bus.cli", *command], env=env, input="{}\n",
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "Unclosed" not in result.stderr, result.stderr  # what start() opened was closed
    assert re.search(r"not reachable|cannot reach|Is a broker running", result.stderr)


def test_topics_create_is_idempotent(settings: Settings) -> None:
    # the fixture created them already
    result = bus("topics", "create", settings=settings)
    assert result.returncode == 0, result.stderr
    assert "0 created" in result.stdout


def test_topics_create_makes_the_catalogue_and_an_inbox_per_department(
    settings: Settings,
) -> None:
    from bus.streaming.topics import full_catalogue, inbox_topic

    fresh = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "-fresh"})
    result = bus("topics", "create", settings=fresh)
    assert result.returncode == 0, result.stderr
    expected = full_catalogue(fresh)
    assert f"{len(expected)} created" in result.stdout
    assert inbox_topic(fresh, "ks.finance") in result.stdout

    async def partitions() -> dict[str, int]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(**fresh.kafka())
        await consumer.start()
        try:
            names = [t for t in await consumer.topics() if t.startswith(fresh.topic_prefix + ".")]
            return {t: len(parts) for t, parts in (await topic_partitions(consumer, names)).items()}
        finally:
            await consumer.stop()

    found = asyncio.run(partitions())
    assert len(found) == len(expected)
    assert found[inbox_topic(fresh, "ks.finance")] == 1  # one order per inbox
    assert found[fresh.topic("events.penalty")] == fresh.partitions


def test_topics_create_reports_the_partitions_the_broker_has(settings: Settings) -> None:
    # The topics were made with 3 partitions; this run's settings say 6.
    result = bus("topics", "create", settings=settings.model_copy(update={"partitions": 6}))
    assert result.returncode == 0, result.stderr
    assert "0 created" in result.stdout
    assert re.search(r"\d+ with 3 partitions, \d+ with 1 partition\b", result.stdout), result.stdout
    assert "6 partitions" not in result.stdout
    assert "BUS_PARTITIONS is 6, but topics on the broker have 3" in result.stderr, result.stderr


def test_topics_create_says_what_to_do_without_a_broker(tmp_path: Path) -> None:
    s = Settings(broker="127.0.0.1:1", data_dir=tmp_path)
    result = bus("topics", "create", settings=s, timeout=120)
    assert result.returncode == 1
    assert "bus broker" in result.stderr


def test_publish_reports_verdicts_and_exit_status(settings: Settings, tmp_path: Path) -> None:
    codec = EventCodec()
    good, other = penalties(2, seed=21)
    bad = json.loads(codec.to_json(other))
    del bad["payload"]["amount"]
    lines = "\n".join([codec.to_json(good), json.dumps(bad), "{oops"]) + "\n"
    (tmp_path / "events.jsonl").write_text(lines)
    with WorkerProcess(settings, tmp_path / "worker.log"):
        result = bus("publish", str(tmp_path / "events.jsonl"), settings=settings)
        ok = bus("publish", "-", settings=settings,
                 stdin=codec.to_json(penalties(1, seed=22)[0]))  # fmt: skip
        dead = bus("deadletters", "--json", settings=settings)
        only = bus("deadletters", "--reason", "schema.decode", settings=settings)
        decode_origin = next(
            json.loads(line)["origin"]
            for line in dead.stdout.splitlines()
            if line.strip() and json.loads(line)["reason"] == "schema.decode"
        )
        shown = bus("deadletters", "show", decode_origin, settings=settings)
        absent = bus("deadletters", "show", "nowhere/0/0", settings=settings)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "accepted" in result.stdout
    assert "schema.validation" in result.stdout
    assert "payload.amount" in result.stdout
    assert "schema.decode" in result.stdout
    assert "3 published, 1 accepted" in result.stdout
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rows = [json.loads(line) for line in dead.stdout.splitlines() if line.strip()]
    assert sorted(r["reason"] for r in rows) == ["schema.decode", "schema.validation"]
    assert next(r for r in rows if r["reason"] == "schema.validation")["field"] == "payload.amount"
    assert shown.returncode == 0, shown.stderr
    assert "{oops" in shown.stdout
    assert "bus.reason" in shown.stdout
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert re.search(rf"bus\.rejected_at\s+\S*\s*\d{{13}} \({today} ", shown.stdout), shown.stdout
    assert absent.returncode == 1
    assert "schema.decode" in only.stdout
    assert "schema.validation" not in only.stdout


@pytest.mark.timeout(180)
def test_schemas_export_writes_only_into_a_checkout_or_where_told(tmp_path: Path) -> None:
    import shutil

    import bus as package

    here = bus("schemas", "export", cwd=tmp_path)  # the checkout's schemas, already in step
    assert here.returncode == 0, here.stderr
    assert "0 schemas added" in here.stdout
    assert not (tmp_path / "bus").exists(), "wrote relative to the current directory"

    site = tmp_path / "lib/site-packages"  # the same package, installed
    shutil.copytree(Path(package.__file__).parent, site / "bus",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    installed = {"PYTHONPATH": str(site)}
    refused = bus("schemas", "export", cwd=tmp_path, env=installed)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "not a source checkout" in refused.stderr
    assert "--out DIR" in refused.stderr
    assert not (tmp_path / "bus").exists()
    before = sorted(p.name for p in (site / "bus/schemas/avro").iterdir())

    out = tmp_path / "schemas"
    told = bus("schemas", "export", "--out", str(out), cwd=tmp_path, env=installed)
    assert told.returncode == 0, told.stderr
    assert (out / "registry.json").exists()
    assert sorted(p.name for p in (site / "bus/schemas/avro").iterdir()) == before
    assert "--out" in bus("schemas", "export", "--help").stdout


def test_schemas_check_passes_on_the_shipped_contract() -> None:
    result = bus("schemas", "check")
    assert result.returncode == 0, result.stderr
    assert "agree" in result.stdout


def test_demo_plays_the_scenarios_and_exits_zero(postgres_dsn: str, tmp_path: Path) -> None:
    started = time.monotonic()
    result = bus("demo", timeout=180, env={"BUS_DEMO_POSTGRES": postgres_dsn}, cwd=tmp_path)
    ran_ms = (time.monotonic() - started) * 1000
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "all events ended where they should" in out
    assert "bus demo --engine kafka" in out
    # Its data directory stays, with the key the demo's certificates verify with.
    assert "Kept: var/demo (BUS_DATA_DIR)" in out, out[-2000:]
    assert (tmp_path / "var" / "demo" / "keys" / "ks-bus-1.pub").is_file()
    for reason in ("duplicate.event_id", "schema.uscc", "auth.event_type", "schema.validation",
                   "schema.decode", "schema.unknown_type"):  # fmt: skip
        assert reason in out
    assert "events.penalty" in out
    assert "events.enterprise" in out
    # The department edge: gateway, outbox (the session's PostgreSQL) and webhook.
    assert "Departments without Kafka" in out
    assert "accepted_for_processing" in out
    assert "accepted on the canonical" in out
    assert "signature checked" in out
    # Every case is timed from its trigger reaching the bus, not from when it occurred (a
    # penalty decided months ago): no time in the tables exceeds the demo's own run.
    took = [int(ms) for ms in re.findall(r"(\d+) ms\b", out)]
    assert len(took) >= 14, out[-3000:]  # 2 certificates, 1 approval, 10 + 1 cases, the edge
    assert max(took) < ran_ms, (sorted(took)[-3:], ran_ms)
    assert "trigger not found" not in out


@pytest.mark.timeout(600)  # 140 s on two cores busy with other work
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_keep_running_says_how_to_reach_it_and_stops_everything(
    stop: int, tmp_path: Path
) -> None:
    import shlex

    import httpx

    # A newcomer after `make demo`: .venv/bin is not on PATH, so plain `bus` would not run.
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and d != venv_bin)  # fmt: skip
    env = {**os.environ, "COLUMNS": "200", "PATH": path}
    demo = subprocess.Popen(
        [sys.executable, "-m", "bus.cli", "demo", "--keep-running"], cwd=tmp_path,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        lines = []
        for line in demo.stdout:
            lines.append(line)
            if "Ctrl-C here to stop" in line:
                break
        printed = "".join(lines)
        export = next(ln for ln in lines if ln.strip().startswith("export "))
        assigned = {k: shlex.split(v)[0] for k, v in re.findall(r"(BUS_\w+)=(\S+)", export)}
        assert set(assigned) == {"BUS_BROKER", "BUS_TOPIC_PREFIX", "BUS_APP_ID", "BUS_PARTITIONS",
                                 "BUS_DATA_DIR"}, printed[-2000:]  # fmt: skip
        hint = re.search(r"^\s+(.+?) status; ", printed, re.M)
        assert hint is not None, printed[-2000:]
        command = shlex.split(hint.group(1))
        assert command != ["bus"], "plain `bus` is not on this PATH"
        reach = {**env, **assigned}

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            """The printed command, as a person pastes it, in the directory the demo ran in."""
            return subprocess.run([*command, *args], env=reach, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=60)  # fmt: skip

        status = run("status")
        assert status.returncode == 0, status.stderr
        assert "no worker running" not in status.stdout, status.stdout
        assert "ingress/0" in status.stdout
        uscc = re.search(r"trace (\S+)", printed)
        assert uscc is not None, printed[-2000:]
        trace = run("trace", uscc.group(1))
        assert trace.returncode == 0, trace.stderr
        assert "enterprise.registered" in trace.stdout
        # topics create reports what the broker has: the demo's 3 partitions, not a default.
        topics = run("topics", "create")
        assert topics.returncode == 0, topics.stderr
        assert "0 created" in topics.stdout
        assert re.search(r"\d+ with 3 partitions", topics.stdout), topics.stdout
        assert "BUS_PARTITIONS is" not in topics.stderr, topics.stderr
        # Certificates: listed, exported, verified by the printed key and by the gateway.
        listing = run("certificate", "list")
        assert listing.returncode == 0, listing.stderr
        serial = next(w for w in listing.stdout.split() if w.startswith("KS-2"))
        exported = run("certificate", "export", serial, "-o", "c.json")
        assert exported.returncode == 0, exported.stderr
        key = re.search(r"verify c\.json -k (\S+)", printed)
        assert key is not None, printed[-2000:]
        assert (tmp_path / key.group(1)).is_file()
        url = re.search(r"Gateway: (http://\S+) ", printed)
        assert url is not None, printed[-2000:]
        with httpx.Client(base_url=url.group(1), timeout=30) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/docs").status_code == 200
            verdict = http.post("/v1/certificates/verify",
                                content=(tmp_path / "c.json").read_bytes())  # fmt: skip
            assert verdict.json()["valid"] is True, verdict.text
        demo.send_signal(stop)
        # Gateway, worker and broker each get SIGKILL if SIGTERM is not enough in 15, 20 and
        # 10 s: it exits well within this unless it hangs.
        code = demo.wait(120)
        assert code == 0, printed[-2000:] + demo.stdout.read()[-2000:]
        for address in (assigned["BUS_BROKER"].removeprefix("kafka://"),
                        url.group(1).removeprefix("http://")):  # fmt: skip
            host, port = address.rsplit(":", 1)
            with pytest.raises(ConnectionRefusedError):  # broker and gateway went with it
                socket.create_connection((host, int(port)), timeout=2).close()
        # The key outlives the demo: what it exported still verifies.
        after = run("certificate", "verify", "c.json", "-k", key.group(1))
        assert after.returncode == 0, after.stdout + after.stderr
    finally:
        if demo.poll() is None:  # SIGTERM first: a SIGKILL would leave its worker, gateway and
            demo.terminate()  # broker running, and they would slow every test after this one
            try:
                demo.wait(120)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
        if demo.stdout is not None:
            demo.stdout.close()


def test_a_certificate_is_exported_and_verified_from_the_command_line(
    settings: Settings, tmp_path: Path
) -> None:
    import random
    from datetime import date

    from bus.dev.samples import enterprise, registered
    from bus.schemas.events import model_for

    rng = random.Random(71)
    firm = enterprise(rng)
    codec = EventCodec()
    req = model_for("certificate.requested")(
        event_type="certificate.requested", source="ks.finance", subject=firm.uscc,
        payload={"period_start": date(2025, 1, 1), "period_end": date(2025, 12, 31),
                 "purpose": "bidding", "requested_by": "ks.finance", "applicant": "赵敏"},
    )  # fmt: skip
    events = tmp_path / "events.jsonl"
    events.write_text(codec.to_json(registered(firm, rng)) + "\n" + codec.to_json(req) + "\n")
    with WorkerProcess(settings, tmp_path / "worker.log"):
        assert bus("publish", str(events), settings=settings).returncode == 0

        def serials() -> list[str]:
            listing = bus("certificate", "list", "--uscc", firm.uscc, settings=settings)
            assert listing.returncode == 0, listing.stderr
            return [w for w in listing.stdout.split() if w.startswith("KS-2")]

        found = _wait_for(serials)
        assert found, "no certificate issued"
        serial = found[0]
        exported = bus("certificate", "export", serial, "--out", str(tmp_path / "c.json"),
                       settings=settings)  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    public = settings.data_dir / "keys" / f"{settings.signing_key_id}.pub"
    ok = bus("certificate", "verify", str(tmp_path / "c.json"), "--public-key", str(public))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert firm.uscc in ok.stdout
    doc = json.loads((tmp_path / "c.json").read_text())
    doc["result"] = "clean" if doc["result"] != "clean" else "record_found"
    (tmp_path / "forged.json").write_text(json.dumps(doc, ensure_ascii=False))
    forged = bus(
        "certificate", "verify", str(tmp_path / "forged.json"), "--public-key", str(public)
    )
    assert forged.returncode == 1
    assert "certificate.bad_signature" in forged.stderr


def test_trace_follows_a_case_across_departments(settings: Settings, tmp_path: Path) -> None:
    import random

    from bus.dev.samples import enterprise, penalty, registered

    rng = random.Random(91)
    firm = enterprise(rng)
    codec = EventCodec()
    reg = registered(firm, rng)
    (tmp_path / "e.jsonl").write_text(
        codec.to_json(reg) + "\n" + codec.to_json(penalty(firm, rng)) + "\n"
    )
    with WorkerProcess(settings, tmp_path / "worker.log"):
        assert bus("publish", str(tmp_path / "e.jsonl"), settings=settings).returncode == 0
        case = _bus_until(lambda r: r.stdout.count("task.created") == 4,
                          "trace", str(reg.event_id), settings=settings)  # fmt: skip
        by_uscc = _bus_until(lambda r: "penalty.imposed" in r.stdout,
                             "trace", firm.uscc, settings=settings)  # fmt: skip
        missing = bus("trace", "no-such-case", settings=settings)
    # The registration's case: the registration and the four tell-us-once tasks, in order.
    assert case.returncode == 0, case.stderr
    assert case.stdout.count("task.created") == 4, case.stdout
    assert case.stdout.index("enterprise.registered") < case.stdout.index("task.created")
    assert "ks.tax" in case.stdout
    assert "penalty.imposed" not in case.stdout  # another case
    assert by_uscc.returncode == 0
    assert "penalty.imposed" in by_uscc.stdout
    assert "enterprise.registered" in by_uscc.stdout
    # The penalty was decided months before the registration was published: shown in days.
    assert re.search(r"\b\d+ d \d+ h\b", by_uscc.stdout), by_uscc.stdout
    assert missing.returncode == 1


def test_dead_letters_are_replayed_once_after_a_fix(settings: Settings, tmp_path: Path) -> None:
    import yaml

    from bus.dev.samples import penalties

    # The directory of the day forgot the Jinxi bureau: its penalties are dead-lettered.
    shipped = Path(__file__).resolve().parents[2] / "bus" / "data" / "departments.yaml"
    directory = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    directory["departments"] = [
        d for d in directory["departments"] if d["code"] != "ks.enforcement.jinxi"
    ]
    forgetful = tmp_path / "departments.yaml"
    forgetful.write_text(yaml.safe_dump(directory, allow_unicode=True), encoding="utf-8")
    broken = settings.model_copy(update={"departments_file": forgetful})
    codec = EventCodec()
    jinxi = next(e for e in penalties(200, seed=93) if e.source == "ks.enforcement.jinxi")
    other = next(e for e in penalties(200, seed=93) if e.source != "ks.enforcement.jinxi")
    (tmp_path / "e.jsonl").write_text(codec.to_json(jinxi) + "\n" + codec.to_json(other) + "\n")
    with WorkerProcess(broken, tmp_path / "worker.log"):
        first = bus("publish", str(tmp_path / "e.jsonl"), settings=broken)
    assert "auth.unknown_source" in first.stdout
    # The directory is fixed (the shipped one); the worker restarts; the operator replays.
    with WorkerProcess(settings, tmp_path / "worker.log"):
        dry = bus("deadletters", "replay", "--reason", "auth.", "--dry-run", settings=settings)
        done = bus("deadletters", "replay", "--reason", "auth.", settings=settings)
        again = bus("deadletters", "replay", "--reason", "auth.", settings=settings)
        canonical = _bus_until(lambda r: str(jinxi.payload.case_number) in r.stdout,
                               "trace", jinxi.subject, settings=settings)  # fmt: skip
    assert "1 would replay" in dry.stdout
    assert "1 replayed" in done.stdout
    assert "0 replayed, 1 skipped" in again.stdout
    assert "already replayed" in again.stdout
    assert str(jinxi.payload.case_number) in canonical.stdout, "the replayed penalty is not on it"


def test_status_shows_workers_partitions_dead_letters_and_tasks(
    settings: Settings, tmp_path: Path
) -> None:
    import random

    from bus.dev.samples import enterprise, registered

    rng = random.Random(95)
    codec = EventCodec()
    (tmp_path / "e.jsonl").write_text(codec.to_json(registered(enterprise(rng), rng)) + "\n{bad\n")
    with WorkerProcess(settings, tmp_path / "worker.log"):
        bus("publish", str(tmp_path / "e.jsonl"), settings=settings)
        up = _bus_until(lambda r: "tasks: 4 open" in r.stdout, "status", settings=settings)
    down = bus("status", settings=settings)
    assert up.returncode == 0, up.stderr
    assert "reachable" in up.stdout
    for p in range(3):
        assert f"ingress/{p}" in up.stdout
    assert "dead letters: 1 (schema.decode 1)" in up.stdout
    assert "tasks: 4 open, 0 overdue" in up.stdout
    assert down.stdout.count("no worker running") == 3  # ingest, correlate, cases
    unreachable = bus("status", settings=settings.model_copy(update={"broker": "127.0.0.1:1"}))
    assert unreachable.returncode == 1


@pytest.mark.slow("a worker whose clock runs a month ahead, and the CLI run several times")
@pytest.mark.timeout(600)  # 221 s on two cores busy with other work
def test_tasks_inbox_and_local_times_from_the_command_line(
    settings: Settings, tmp_path: Path
) -> None:
    import random

    from bus.dev.samples import enterprise, registered
    from bus.schemas.events import model_for

    rng = random.Random(97)
    firm = enterprise(rng)
    reg = registered(firm, rng)
    codec = EventCodec()
    (tmp_path / "reg.json").write_text(codec.to_json(reg))
    # The worker sees a clock a month ahead: the four tell-us-once tasks are late at once.
    late = settings.model_copy(update={"clock_skew": 30 * 86400.0, "task_check_interval": 0.2})

    def tasks(*args: str) -> list[dict[str, object]]:
        result = bus("tasks", "--json", *args, settings=settings)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    with WorkerProcess(late, tmp_path / "worker.log"):
        assert bus("publish", str(tmp_path / "reg.json"), settings=settings).returncode == 0
        overdue = _wait_for(lambda: [t for t in tasks() if t["state"] == "escalated"]
                            if len(tasks("--state", "escalated")) == 4 else None)  # fmt: skip
        assert overdue, tasks("--state", "all")
        tax = next(t for t in tasks("--department", "ks.tax"))
        done = model_for("task.completed")(
            event_type="task.completed", source="ks.tax", subject=firm.uscc,
            correlation_id=str(tax["correlation_id"]),
            payload={"task_id": tax["task_id"], "outcome": "registered"},
        )  # fmt: skip
        (tmp_path / "done.json").write_text(codec.to_json(done))
        assert bus("publish", str(tmp_path / "done.json"), settings=settings).returncode == 0
        assert _wait_for(lambda: tasks("--state", "completed")), tasks("--state", "all")
        listing = bus("tasks", settings=settings)
        narrow = bus("tasks", "--state", "all", settings=settings, env={"COLUMNS": "80"})
        every = tasks("--state", "all")
        one = bus("tasks", str(tax["task_id"]), settings=settings)
        unknown = bus("tasks", "no-such-task", settings=settings)
        everything = bus("inbox", "ks.tax", "--json", "--limit", "100", settings=settings)
        newest = bus("inbox", "ks.tax", "--limit", "2", settings=settings)
        nobody = bus("inbox", "ks.nobody", settings=settings)
        shanghai = bus("trace", str(reg.event_id), settings=settings, env={"TZ": "Asia/Shanghai"})
        utc = bus("trace", str(reg.event_id), "--tz", "UTC", settings=settings)
        bad_zone = bus("trace", str(reg.event_id), "--tz", "Mars/Olympus", settings=settings)
    # Open tasks: the three not completed, each late, counted by department.
    assert listing.returncode == 0, listing.stderr
    assert "3 tasks shown" in listing.stdout, listing.stdout
    for t in every:  # what an operator copies into the next command, whole at 80 columns
        assert str(t["task_id"]) in narrow.stdout, narrow.stdout
        assert str(t["subject"]) in narrow.stdout, narrow.stdout
    town = f"ks.town.{firm.town.lower()}"
    summary = next(ln for ln in listing.stdout.splitlines() if "overdue by department" in ln)
    assert summary.endswith(f"ks.housingfund 1, ks.hrss 1, {town} 1"), summary
    assert "ks.tax" not in summary
    # One task: its facts and its whole history, in order.
    assert one.returncode == 0, one.stderr
    history = [e for e in ("task.created", "task.overdue", "task.escalated", "task.completed")
               if e in one.stdout]  # fmt: skip
    assert history == ["task.created", "task.overdue", "task.escalated", "task.completed"]
    positions = [one.stdout.index(e) for e in history]
    assert positions == sorted(positions), one.stdout
    assert "registered" in one.stdout  # the outcome
    assert unknown.returncode == 1
    assert "no task 'no-such-task'" in unknown.stderr
    # The inbox, newest last: --limit 2 shows the last two of everything, in order.
    items = [json.loads(line) for line in everything.stdout.splitlines() if line.strip()]
    cursors = [i["cursor"] for i in items]
    assert cursors == sorted(cursors), everything.stdout
    assert len(items) >= 3, everything.stdout
    assert newest.returncode == 0, newest.stderr
    assert "2 newest items shown" in newest.stdout
    shown = [int(c) for c in re.findall(r"│\s*(\d+)\s*│\s*\d{4}-", newest.stdout)]
    assert shown == cursors[-2:], newest.stdout
    assert nobody.returncode == 1
    assert "no department 'ks.nobody'" in nobody.stderr
    # Local times, with the zone named; the same moments in UTC are 8 hours earlier.
    assert shanghai.returncode == 0, shanghai.stderr
    assert "time (CST, UTC+08:00)" in shanghai.stdout, shanghai.stdout
    assert "time (UTC)" in utc.stdout, utc.stdout
    first = [
        re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.\d{3}", r.stdout) for r in (shanghai, utc)
    ]
    assert first[0] is not None, shanghai.stdout
    assert first[1] is not None, utc.stdout
    from datetime import datetime, timedelta

    here, there = (datetime.fromisoformat(m.group(1)) for m in first if m is not None)
    assert here - there == timedelta(hours=8)
    assert bad_zone.returncode == 2
    assert "not a time zone" in bad_zone.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("tasks",),
        ("inbox", "ks.tax"),
        ("publish", "--event", "{}"),
        ("trace", "913205833E0TWMFM5X"),
        ("deadletters",),
        ("deadletters", "replay", "--reason", "auth."),
        ("certificate", "list"),
        ("report", "list"),
    ],
    ids=lambda a: " ".join(a[:2]),
)  # fmt: skip
def test_a_command_before_bus_topics_create_says_to_run_it(
    settings: Settings, args: tuple[str, ...]
) -> None:
    """Not a 40 s wait and millions of 'not found in cluster metadata' lines (`bus tasks`)."""
    bare = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}-none"})
    started = time.monotonic()
    result = bus(*args, settings=bare, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr[-2000:]
    assert "bus topics create" in result.stderr
    assert f"{bare.topic_prefix}.ingress" in result.stderr or "more" in result.stderr
    assert len(result.stderr.splitlines()) < 10, result.stderr[-2000:]
    assert time.monotonic() - started < 40  # no read ran into its timeout
