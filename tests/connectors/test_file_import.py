"""File import: every row checked first, all or nothing, stable ids, verdicts per row.

The end-to-end test imports a bureau's penalty export through a real ``bus worker`` and then
imports it again with the ``bus import`` command: the first time every row is accepted on the
canonical topic, the second time every row is a duplicate and nothing new is accepted. Files
with bad rows are refused whole, naming each row's line and field, with nothing on ingress.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import os
import random
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bus.cli import app
from bus.dev.processes import WorkerProcess, settings_env
from bus.dev.samples import enterprise, penalty
from bus.errors import ConfigurationError
from bus.schemas.envelope import Envelope
from bus.settings import Settings
from bus.streaming.codec import EventCodec
from connectors import registry
from connectors.base import Source
from connectors.contract import SourceContract, TopicWatcher, sample_events
from connectors.file_import import (
    EncodingMismatch,
    FileImportSource,
    ImportRejected,
    guess_format,
)

pytestmark = pytest.mark.integration

BUREAU = "ks.enforcement.huaqiao"
COLUMNS = ["subject", "occurred_at", "case_number", "kind", "violation", "legal_basis",
           "amount", "decided_on", "agency", "publicity_until"]  # fmt: skip


def bureau_penalties(n: int, seed: int = 11) -> list[Envelope]:
    """``n`` penalties by the Huaqiao bureau over a handful of enterprises."""
    rng = random.Random(seed)
    firms = [dataclasses.replace(enterprise(rng), town="Huaqiao") for _ in range(4)]
    return [penalty(rng.choice(firms), rng, n=i + 1) for i in range(n)]


def export_row(e: Envelope) -> dict[str, str]:
    """One row as the bureau's case system exports it: flat text, no event id."""
    p = json.loads(EventCodec.to_json(e))["payload"]
    return {"subject": e.subject, "occurred_at": e.occurred_at.isoformat(),
            **{c: str(p[c] or "") for c in COLUMNS[2:]}}  # fmt: skip


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str] = COLUMNS) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def bus(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", "import", *args],
        env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip


def connect(settings: Settings, config: Path, name: str) -> subprocess.CompletedProcess[str]:
    """``bus connect NAME -c CONFIG`` as an operator runs it (no metrics server, wide lines)."""
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200", "BUS_METRICS_PORT": "0"}
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", "connect", name, "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip


def importer(settings: Settings, path: Path, **kwargs: Any) -> FileImportSource:
    kwargs.setdefault("wait", 0)
    return FileImportSource(settings, path, **kwargs)


class TestFileImportSource(SourceContract):
    def make_connector(self, settings: Settings, **kwargs: Any) -> Source:
        return importer(settings, self.tmp_path / "import.jsonl", batch_size=5, **kwargs)

    async def feed(self, n: int) -> list[str]:
        events = sample_events(n)
        lines = [EventCodec.to_json(e) + "\n" for e in events]
        (self.tmp_path / "import.jsonl").write_text("".join(lines), encoding="utf-8")
        return [str(e.event_id) for e in events]


# --- end to end ----------------------------------------------------------------------------


@pytest.mark.e2e
async def test_a_good_export_is_accepted_then_a_second_import_is_all_duplicates(
    settings: Settings, tmp_path: Path
) -> None:
    events = bureau_penalties(20)
    path = write_csv(tmp_path / "huaqiao-2026.csv", [export_row(e) for e in events])
    steps: list[tuple[str, int, int]] = []
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        first = importer(settings, path, source=BUREAU, event_type="penalty.imposed", wait=30,
                         batch_size=8, progress=lambda *a: steps.append(a))  # fmt: skip
        await first.serve()
        report = first.report
        assert report is not None
        assert report.ok, report.to_json()
        assert report.counts() == {"accepted": 20}
        assert {r.topic for r in report.results} == {settings.topic("events.penalty")}
        assert steps[-1] == ("publishing", 20, 20)
        assert ("validating", 20, 20) in steps

        again = bus(settings, str(path), "--source", BUREAU, "--type", "penalty.imposed",
                    "--report", str(tmp_path / "again.json"))  # fmt: skip
        assert again.returncode == 0, again.stdout + again.stderr
        second = json.loads((tmp_path / "again.json").read_text())
        assert second["counts"] == {"duplicate": 20}
        assert [r["event_id"] for r in second["results"]] == [r.event_id for r in report.results]
    finally:
        worker.stop()
    async with TopicWatcher(settings, settings.topic("events.penalty")) as canonical:
        await canonical.wait_count(20)
        await canonical.settle(0.5)
    assert sorted(canonical.ids()) == sorted(r.event_id for r in report.results)
    payloads = {EventCodec().decode(r.value or b"").payload.case_number for r in canonical.records}
    assert payloads == {e.payload.case_number for e in events}


# --- all or nothing ------------------------------------------------------------------------


def bad_export(tmp_path: Path) -> tuple[Path, dict[int, tuple[str | None, str]]]:
    """A CSV with good rows and one of each kind of bad row; line -> (field, reason)."""
    good = [export_row(e) | {"source": BUREAU} for e in bureau_penalties(6)]
    rows = [dict(r) for r in good]
    rows[1]["subject"] = rows[1]["subject"][:-1] + ("0" if rows[1]["subject"][-1] != "0" else "1")
    rows[2]["violation"] = ""
    rows[3]["amount"] = "五千元"
    rows[4]["source"] = "ks.town.huaqiao"  # a town government may not publish penalties
    path = write_csv(tmp_path / "bad.csv", rows, ["source", *COLUMNS])
    with path.open("a", encoding="utf-8") as f:
        f.write(f"{BUREAU},91320583MA1XXXXXX1,2026-01-02\n")  # a truncated line
    return path, {
        3: ("subject", "schema.uscc"),
        4: ("violation", "schema.validation"),  # as the file names them: its headers
        5: ("amount", "schema.validation"),
        6: ("event_type", "auth.event_type"),
        8: (None, "import.csv"),
    }


async def test_a_file_with_bad_rows_is_refused_whole_naming_every_bad_row(
    settings: Settings, tmp_path: Path
) -> None:
    path, expected = bad_export(tmp_path)
    source = importer(settings, path, event_type="penalty.imposed")
    async with TopicWatcher(settings, settings.topic("ingress")) as ingress:
        with pytest.raises(ImportRejected) as info:
            await source.serve()
        await ingress.settle(0.5)
    assert ingress.records == [], "a refused file must publish nothing"
    report = info.value.report
    got = {r.line: (r.field, r.reason) for r in report.rejections}
    assert got == expected, report.rejections
    assert report.rows == 7
    assert report.published == 0
    assert report.counts() == {"passed": 2, "rejected": 5}
    assert "5 of 7 rows rejected, nothing published" in info.value.message


@pytest.mark.e2e
def test_the_command_lists_each_rejected_row_and_exits_1(
    settings: Settings, tmp_path: Path
) -> None:
    path, expected = bad_export(tmp_path)
    result = bus(settings, str(path), "--type", "penalty.imposed", "--report",
                 str(tmp_path / "r.json"))  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "nothing published" in result.stdout
    rows = result.stdout.splitlines()
    for line, (field, reason) in expected.items():
        assert any(f" {line} " in x and reason in x and (field or "") in x for x in rows), (
            f"line {line} ({field}, {reason}) not listed:\n{result.stdout}"
        )
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] is False
    assert report["published"] == 0
    assert {r["line"] for r in report["rejections"]} == set(expected)


@pytest.mark.e2e
def test_the_command_publishes_a_good_file_without_waiting(
    settings: Settings, tmp_path: Path
) -> None:
    events = sample_events(5)
    path = tmp_path / "events.ndjson"
    path.write_text("".join(EventCodec.to_json(e) + "\n" for e in events), encoding="utf-8")
    dry = CliRunner().invoke(app, ["import", str(path), "--dry-run"], env=settings_env(settings))
    assert dry.exit_code == 0, dry.output
    assert "all 5 rows pass" in dry.stdout
    result = bus(settings, str(path), "--no-wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "published" in result.stdout

    async def read() -> list[str]:
        async with TopicWatcher(settings, settings.topic("ingress")) as ingress:
            await ingress.wait_count(5)
            await ingress.settle(0.3)
        return ingress.ids()

    assert sorted(asyncio.run(read())) == sorted(str(e.event_id) for e in events)


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_bus_connect_reports_a_file_import_as_bus_import_does(
    settings: Settings, tmp_path: Path
) -> None:
    good = write_csv(tmp_path / "good.csv", [export_row(e) for e in bureau_penalties(5)])
    bad, expected = bad_export(tmp_path)
    config = tmp_path / "connectors.yaml"
    config.write_text(
        "connectors:\n"
        f"  - {{name: good, kind: file-import, options: {{path: '{good}', wait: 0,\n"
        f"     source: {BUREAU}, event_type: penalty.imposed}}}}\n"
        f"  - {{name: bad, kind: file-import, options: {{path: '{bad}',\n"
        "     event_type: penalty.imposed}}\n"
    )
    result = connect(settings, config, "good")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = [x for x in result.stdout.splitlines() if "good.csv" in x]
    assert summary, result.stdout
    assert re.search(r"good\.csv\s*│\s*csv\s*│\s*5\s*│\s*5\s*│\s*5", summary[-1]), summary
    assert "published" in result.stdout
    assert "publishing" in result.stderr  # the progress bars, as bus import draws them

    refused = connect(settings, config, "bad")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "nothing published" in refused.stdout
    rows = refused.stdout.splitlines()
    for line, (field, reason) in expected.items():
        assert any(f" {line} " in x and reason in x and (field or "") in x for x in rows), (
            f"line {line} ({field}, {reason}) not listed:\n{refused.stdout}"
        )
    assert re.search(r"bad\.csv\s*│\s*csv\s*│\s*7\s*│\s*0\s*│\s*2\s*│\s*5", refused.stdout)


# --- rows, ids and mapping -----------------------------------------------------------------


def test_json_lines_rejects_what_is_not_an_event(settings: Settings, tmp_path: Path) -> None:
    good = [EventCodec.to_json(e) for e in sample_events(3)]
    twin = json.loads(good[0])
    unknown = json.loads(good[1]) | {"event_type": "penalty.forgiven"}
    path = tmp_path / "x.jsonl"
    deep = "[" * 100_000 + "]" * 100_000  # used to stop the whole import (RecursionError)
    path.write_text("\n".join([good[0], "{oops", "[1]", json.dumps(twin), json.dumps(unknown),
                               "", deep, good[2]]) + "\n")  # fmt: skip
    report = importer(settings, path).check()
    assert [(r.line, r.field, r.reason) for r in report.rejections] == [
        (2, None, "schema.decode"),
        (3, None, "schema.decode"),
        (4, "event_id", "import.duplicate_row"),
        (5, "event_type", "schema.unknown_type"),
        (7, None, "schema.too_deep"),
    ]
    assert "also on line 1" in report.rejections[2].message
    assert report.rows == 7


def test_a_row_from_another_department_is_refused_when_a_source_is_given(
    settings: Settings, tmp_path: Path
) -> None:
    rows = [export_row(e) | {"source": BUREAU} for e in bureau_penalties(2)]
    rows[1]["source"] = "ks.enforcement.zhoushi"
    path = write_csv(tmp_path / "x.csv", rows, ["source", *COLUMNS])
    report = importer(settings, path, source=BUREAU, event_type="penalty.imposed").check()
    assert [(r.line, r.field, r.reason) for r in report.rejections] == [
        (3, "source", "import.source_mismatch")
    ]


def test_ids_are_stable_per_file_and_line_or_per_key_fields(
    settings: Settings, tmp_path: Path
) -> None:
    rows = [export_row(e) for e in bureau_penalties(4)]
    opts: dict[str, Any] = {"source": BUREAU, "event_type": "penalty.imposed"}
    a = write_csv(tmp_path / "a.csv", rows)
    b = write_csv(tmp_path / "b.csv", rows[:3])  # another export, same first three cases

    def ids(path: Path, **more: Any) -> list[str]:
        report = importer(settings, path, **opts, **more).check()
        assert not report.rejections, report.rejections
        return [r.event_id for r in report.results]

    assert ids(a) == ids(a), "the same file must give the same ids"
    assert len(set(ids(a))) == 4
    assert not set(ids(a)) & set(ids(b)), "by file hash: a different file is a different import"
    by_case = ids(a, id_from=["case_number"])
    assert ids(b, id_from=["case_number"]) == by_case[:3], "by case number: same case, same id"
    rows[0]["event_id"] = "0b6c1d7e-8f2a-4c3b-9d4e-5f6a7b8c9d0e"
    c = write_csv(tmp_path / "c.csv", rows, ["event_id", *COLUMNS])
    assert ids(c)[0] == "0b6c1d7e-8f2a-4c3b-9d4e-5f6a7b8c9d0e"


def test_headers_are_mapped_and_local_times_read_in_the_bureaus_zone(
    settings: Settings, tmp_path: Path
) -> None:
    e = bureau_penalties(1)[0]
    names = {"统一社会信用代码": "subject", "决定日期": "occurred_at",
             "处罚决定书文号": "case_number", "罚款金额": "payload.amount"}  # fmt: skip
    by_field = {v.removeprefix("payload."): k for k, v in names.items()}
    row = export_row(e) | {"occurred_at": "2026-03-02 09:30"}
    header = [by_field.get(c, c) for c in COLUMNS]
    path = tmp_path / "export.csv"
    with path.open("w", newline="", encoding="utf-8-sig") as f:  # as spreadsheets save it
        w = csv.writer(f)
        w.writerow(header)
        w.writerow([row[c] for c in COLUMNS])
    source = importer(settings, path, source=BUREAU, event_type="penalty.imposed", columns=names)
    report = source.check()
    assert not report.rejections, report.rejections
    ((_, event),) = source._events
    assert event.subject == e.subject
    assert event.payload.case_number == e.payload.case_number
    assert event.payload.amount == e.payload.amount
    assert event.occurred_at == datetime(2026, 3, 2, 1, 30, tzinfo=UTC)


def test_an_empty_file_imports_nothing_and_a_wrong_encoding_is_a_usage_error(
    settings: Settings, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert importer(settings, empty).check().rows == 0
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes("subject,violation\n9132,未按规定\n".encode("gb18030"))
    with pytest.raises(EncodingMismatch) as info:
        importer(settings, gbk, event_type="penalty.imposed").check()
    assert (info.value.line, info.value.reason) == (2, "import.encoding")
    assert "encoding: gb18030 in the connector's options" in info.value.message
    readable = importer(settings, gbk, event_type="penalty.imposed", encoding="gb18030").check()
    assert {r.reason for r in readable.rejections} != {"import.encoding"}


@pytest.mark.timeout(180)
def test_bus_import_of_a_file_in_another_encoding_exits_2_naming_the_option(
    tmp_path: Path,
) -> None:
    rows = [export_row(e) for e in bureau_penalties(2)]
    gbk = tmp_path / "gbk.csv"
    with gbk.open("w", newline="", encoding="gb18030") as f:  # a case system's export
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    opts = ("--source", BUREAU, "--type", "penalty.imposed")
    result = bus(Settings(), str(gbk), *opts)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "import.encoding" in result.stderr
    assert "is not utf-8-sig text" in result.stderr
    assert "--encoding gb18030" in result.stderr
    assert "Traceback" not in result.stderr
    fixed = bus(Settings(), str(gbk), *opts, "--encoding", "gb18030", "--dry-run")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "all 2 rows pass" in fixed.stdout


@pytest.mark.timeout(120)
def test_each_bad_field_is_listed_with_its_own_reason_under_the_files_header(
    tmp_path: Path,
) -> None:
    names = {"统一社会信用代码": "subject", "罚款金额": "payload.amount"}
    header = ["统一社会信用代码" if c == "subject" else "罚款金额" if c == "amount" else c
              for c in COLUMNS]  # fmt: skip
    rows = [export_row(e) for e in bureau_penalties(2)]
    rows[1] |= {"subject": rows[1]["subject"][:-1] + "X", "amount": "五千元", "violation": ""}
    path = tmp_path / "export.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([r[c] for c in COLUMNS] for r in rows)
    expected = {
        (3, "统一社会信用代码", "schema.uscc"),
        (3, "violation", "schema.validation"),
        (3, "罚款金额", "schema.validation"),
    }
    report = importer(Settings(), path, source=BUREAU, event_type="penalty.imposed",
                      columns=names).check()  # fmt: skip
    assert {(r.line, r.field, r.reason) for r in report.rejections} == expected
    assert len(report.rejections) == 3
    assert report.counts() == {"passed": 1, "rejected": 1}  # rows, not fields
    by_field = {r.field: r.message for r in report.rejections}
    assert "unified social credit code" in by_field["统一社会信用代码"]
    assert "decimal" in by_field["罚款金额"]

    columns = [a for n, f in names.items() for a in ("--column", f"{n}={f}")]
    result = bus(Settings(), str(path), "--source", BUREAU, "--type", "penalty.imposed",
                 "--dry-run", *columns)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    listed = [x for x in result.stdout.splitlines() if "│ 3 " in x]
    for _, field, reason in expected:
        assert any(field in x and reason in x for x in listed), (field, reason, result.stdout)
    assert "payload.amount" not in result.stdout


def test_json_lines_name_bad_fields_by_their_key_path_in_the_file(tmp_path: Path) -> None:
    event = json.loads(EventCodec.to_json(bureau_penalties(1)[0]))
    event["uscc"] = event.pop("subject")[:-1] + "X"
    event["payload"]["amount"] = "五千元"
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(event, ensure_ascii=False) + "\n", encoding="utf-8")
    report = importer(Settings(), path, columns={"uscc": "subject"}).check()
    assert [(r.line, r.field, r.reason) for r in report.rejections] == [
        (1, "uscc", "schema.uscc"),
        (1, "payload.amount", "schema.validation"),
    ]


def test_format_comes_from_the_name_unless_given(tmp_path: Path) -> None:
    assert guess_format(Path("x.CSV")) == "csv"
    assert guess_format(Path("x.ndjson")) == "jsonl"
    with pytest.raises(ConfigurationError, match="format"):
        guess_format(Path("x.xlsx"))


def test_a_connectors_file_entry_builds_it_and_misspelt_options_are_named(
    settings: Settings, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "connectors:\n"
        "  - {name: penalties-2026, kind: file-import,\n"
        "     options: {path: /srv/huaqiao/2026.csv, source: ks.enforcement.huaqiao,\n"
        "               event_type: penalty.imposed, id_from: [case_number], wait: 0}}\n"
        "  - {name: typo, kind: file-import, options: {path: x.csv, evnet_type: a.b}}\n"
        "  - {name: zone, kind: file-import, options: {path: x.csv, timezone: Mars/Olympus}}\n"
    )
    source = registry.build(settings, registry.find(config, "penalties-2026"))
    assert isinstance(source, FileImportSource)
    assert (source.name, source.format, source.id_from) == ("penalties-2026", "csv",
                                                            ["case_number"])  # fmt: skip
    with pytest.raises(ConfigurationError, match="evnet_type"):
        registry.build(settings, registry.find(config, "typo"))
    with pytest.raises(ConfigurationError, match="Mars/Olympus"):
        registry.build(settings, registry.find(config, "zone"))


@pytest.mark.timeout(120)
def test_bus_connect_names_a_misspelt_option_not_the_one_it_meant(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "connectors:\n"
        "  - {name: typo, kind: file-import,\n"
        "     options: {pth: x.csv, source: ks.enforcement.huaqiao}}\n"
        "  - {name: far, kind: file-import, options: {path: x.csv, qqqq: 1}}\n"
    )
    result = connect(Settings(), config, "typo")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "options.pth: unknown option 'pth'; did you mean 'path'?" in result.stderr
    assert "required" not in result.stderr  # not reported as the option it stands for
    far = connect(Settings(), config, "far")
    assert far.returncode == 2, far.stdout + far.stderr
    assert "unknown option 'qqqq'; known: batch_size, columns, encoding," in far.stderr


def test_misspelt_keys_of_an_entry_and_aliased_options_are_suggested(
    settings: Settings, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("connectors:\n  - {name: a, kind: file-import, option: {path: x.csv}}\n")
    with pytest.raises(ConfigurationError, match=r"unknown key 'option'; did you mean 'options'"):
        registry.load(config)
    config.write_text(
        "connectors:\n  - {name: o, kind: outbox, options: {dsn: x, department: "
        "ks.enforcement.huaqiao, shema: cases}}\n"
    )
    with pytest.raises(ConfigurationError, match=r"'shema'; did you mean 'schema'\?"):
        registry.build(settings, registry.find(config, "o"))
