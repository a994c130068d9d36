"""The files the README's "Using it" commands read are there and say what the README says.

``bus import --dry-run`` checks a file exactly as ingest will (schema, USCC, who may publish
what) without a broker, so the examples are checked here; the commands themselves run against
Kafka in the end-to-end tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from bus.cli import app
from bus.schemas.events import model_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
runner = CliRunner()


def dry_run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["import", *args, "--dry-run", "--report", str(out)])
    assert out.exists(), result.output
    return json.loads(out.read_text(encoding="utf-8"))


def test_the_readme_names_only_example_files_that_exist() -> None:
    named = set(re.findall(r"examples/[\w./-]+\w", (ROOT / "README.md").read_text()))
    assert {"examples/events.jsonl", "examples/connectors.yaml"} <= named
    assert {n for n in named if not (ROOT / n).exists()} == set()


def test_the_events_pass_but_the_two_wrong_on_purpose(tmp_path: Path) -> None:
    report = dry_run(tmp_path, str(EXAMPLES / "events.jsonl"))
    rows = report["rows"]
    assert [(r["line"], r["reason"], r["field"]) for r in report["rejections"]] == [
        (rows - 1, "schema.validation", "payload.amount"),
        (rows, "auth.event_type", "event_type"),
    ]
    passed = [r["event_type"] for r in report["results"] if r["status"] == "passed"]
    assert passed[:3] == ["enterprise.registered", "enterprise.registered", "penalty.imposed"]
    assert {"certificate.requested", "report.requested"} <= set(passed)


def test_the_penalty_export_imports_with_the_readmes_options(tmp_path: Path) -> None:
    report = dry_run(
        tmp_path, str(EXAMPLES / "penalties-2025.csv"),
        "--source", "ks.enforcement.huaqiao", "--type", "penalty.imposed",
    )  # fmt: skip
    assert report["counts"] == {"passed": 2}, report["rejections"]
    assert report["ok"]


def test_the_connectors_file_names_a_connector_whose_file_passes(tmp_path: Path) -> None:
    listed = runner.invoke(app, ["connect", "--list", "-c", str(EXAMPLES / "connectors.yaml")])
    assert listed.exit_code == 0, listed.output
    assert "huaqiao-cases" in listed.output
    assert "file-import" in listed.output
    report = dry_run(
        tmp_path, str(EXAMPLES / "huaqiao-cases.jsonl"), "--source", "ks.enforcement.huaqiao"
    )
    assert report["counts"] == {"passed": 1}, report["rejections"]
    assert report["ok"]


def test_the_gateway_example_is_an_event_its_bureau_may_publish() -> None:
    body = json.loads((EXAMPLES / "penalty.json").read_text(encoding="utf-8"))
    event = model_for(body["event_type"]).model_validate(body)
    assert event.source == event.payload.agency == "ks.enforcement.huaqiao"
