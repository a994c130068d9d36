"""Import a CSV or JSON-lines file, all or nothing: ``bus import``, connector kind ``file-import``.

Made for the files departments hand over rather than stream: a town enforcement bureau's
yearly export of penalty decisions, a back-fill after an outage. Every row is checked first,
exactly as ingest will check it (schema, USCC, the department directory's authorisation); if
any row is wrong nothing is published and the report names every bad row with its line, field
(as the file names it: CSV header or JSON key path; one entry per wrong field) and reason, so
the file can be fixed and imported again. A file that passes is published in
batches and, unless told not to wait, the report says per row what the bus made of it:
``accepted``, ``duplicate`` (imported before), or ``rejected``.

JSON lines: one event envelope per line, as ``bus publish`` takes them.

CSV: one event per row, the first row names the columns:

* ``event_id``, ``event_type``, ``schema_version``, ``source``, ``subject``, ``occurred_at``,
  ``correlation_id``, ``causation_id`` are envelope fields;
* every other column is a payload field; ``payload.amount`` and ``amount`` mean the same, and a
  dotted name (``address.town``) fills a nested object;
* ``columns`` renames headers first (``{"统一社会信用代码": "subject", "罚款金额": "amount"}``),
  so an export is imported as it comes out of the case system;
* an empty cell is a missing field (optional fields take their default, required ones are
  rejected); cells are text and are read as the schema's type (``5000.00``, ``2026-03-02``);
* ``occurred_at`` without a UTC offset (``2026-03-02`` or ``2026-03-02 09:30``) is local time
  in ``timezone`` (Asia/Shanghai by default);
* ``event_type`` and ``source`` come from the options when the file has no such column.

A row without an ``event_id`` gets one derived from the file's SHA-256 and the line number (or,
with ``id_from``, from the event type and those fields' values, e.g. the case number), so
importing the same file again has no second effect: the bus reports every row as a duplicate.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import hashlib
import io
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bus.domain.departments import Directory
from bus.edge.publish import Verdict, _collect, verdict_offsets
from bus.errors import BusError, ConfigurationError, ConnectorError, DecodeError, ValidationFailed
from bus.schemas.envelope import Envelope
from bus.schemas.jsontext import load_json
from bus.settings import Settings
from connectors.base import Guarantee, Source

NAMESPACE = uuid.UUID("2d0f7a9e-5c43-4b8e-b1d6-7e4f0a9c3b21")
"""Fixed: the same file and line (or the same key fields) give the same id everywhere."""

ENVELOPE_COLUMNS = (
    "event_id", "event_type", "schema_version", "source", "subject", "occurred_at",
    "correlation_id", "causation_id",
)  # fmt: skip

Format = Literal["csv", "jsonl"]
Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; stages ``validating`` and ``publishing``."""


@dataclass(frozen=True)
class Rejection:
    """A row that cannot be imported, and why: one per wrong field, each with its own reason.

    ``field`` is named as the file names it (the CSV column's header, the JSON key path), so
    whoever fixes the file finds it; a field the file has no column for goes by its own name.
    """

    line: int
    field: str | None
    reason: str
    message: str


@dataclass
class RowResult:
    """What became of one imported row."""

    line: int
    event_id: str
    event_type: str
    subject: str
    status: str = "passed"
    """``passed`` (checked, not published), ``published`` (not waited for), ``accepted``,
    ``duplicate``, ``rejected`` (by the bus, after passing here) or ``unconfirmed`` (no
    verdict in time)."""
    topic: str | None = None
    reason: str | None = None
    error: str | None = None


@dataclass
class ImportReport:
    """Everything an operator needs to know about one import, as the CLI prints and saves it."""

    file: str
    format: str
    sha256: str
    rows: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    results: list[RowResult] = field(default_factory=list)
    published: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Nothing rejected, here or by the bus, and nothing left without a verdict."""
        return not self.rejections and not any(
            r.status in ("rejected", "unconfirmed") for r in self.results
        )

    def counts(self) -> dict[str, int]:
        """Rows by status; locally rejected rows count as ``rejected``."""
        out: dict[str, int] = {}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        if self.rejections:
            out["rejected"] = out.get("rejected", 0) + len({r.line for r in self.rejections})
        return out

    def to_json(self) -> dict[str, Any]:
        """The report for ``--report``: plain JSON types only."""
        return {
            "file": self.file,
            "format": self.format,
            "sha256": self.sha256,
            "rows": self.rows,
            "published": self.published,
            "ok": self.ok,
            "counts": self.counts(),
            "rejections": [asdict(r) for r in self.rejections],
            "results": [asdict(r) for r in self.results],
            "seconds": round(self.seconds, 3),
        }


class ImportRejected(ConnectorError):
    """Rows were rejected; nothing was published (``report`` lists them)."""

    reason = "import.rejected"

    def __init__(self, report: ImportReport) -> None:
        bad = len({r.line for r in report.rejections})
        first = report.rejections[0]
        where = f"line {first.line}" + (f", {first.field}" if first.field else "")
        super().__init__(
            f"{bad} of {report.rows} rows rejected, nothing published; "
            f"first: {where}: {first.message}",
            reason=self.reason,
        )
        self.report = report


class EncodingMismatch(ConfigurationError):
    """The file is not text in the encoding it is read in: no row of it can be read.

    A usage error, not a bad row: the whole file is read wrong until the encoding is set
    (GB18030 exports from case systems read as UTF-8 are the usual case).
    """

    reason = "import.encoding"

    def __init__(
        self, path: Path, encoding: str, data: bytes, exc: UnicodeDecodeError, option: str
    ) -> None:
        line = data[: exc.start].count(b"\n") + 1
        bad = " ".join(f"0x{b:02x}" for b in data[exc.start : exc.end])
        guess = ""
        if encoding.replace("_", "-").lower() not in ("gb18030", "gbk", "gb2312"):
            try:
                data.decode("gb18030")
                guess = " (it reads as gb18030)"
            except UnicodeDecodeError:
                pass
        super().__init__(
            f"{path} is not {encoding} text: {bad} on line {line} (byte {exc.start}) is not "
            f"{encoding}{guess}; set the file's encoding, e.g. {option.format('gb18030')}"
        )
        self.line = line


class FileImportSource(Source):
    """Publishes one CSV or JSON-lines file, every row checked first; all or nothing.

    Guarantee: effectively-once. Each row keeps a stable ``event_id`` (its own, or one derived
    from the file's hash and line, or from ``id_from`` fields), so a re-run after a crash, or a
    second import of the same file, has no second effect. ``run`` returns once the file is
    published (and judged, when ``wait`` > 0): ``bus connect`` runs it once, like a job.
    """

    guarantee = Guarantee.EFFECTIVELY_ONCE
    kind = "file-import"

    class Options(BaseModel):
        """The connectors-file options; the same as ``bus import``'s flags."""

        model_config = ConfigDict(extra="forbid")

        path: Path
        format: Format | None = None
        source: str | None = None
        event_type: str | None = None
        columns: dict[str, str] = Field(default_factory=dict)
        id_from: list[str] = Field(default_factory=list)
        encoding: str = "utf-8-sig"
        timezone: str = "Asia/Shanghai"
        batch_size: int = Field(default=500, ge=1, le=10_000)
        wait: float = Field(default=30.0, ge=0)
        historical: bool = Field(
            default=False, description="the rows record the past: fold them, start no matter"
        )

        @field_validator("timezone")
        @classmethod
        def _zone(cls, value: str) -> str:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r}") from None
            return value

    def __init__(
        self,
        settings: Settings,
        path: Path,
        *,
        format: Format | None = None,
        source: str | None = None,
        event_type: str | None = None,
        columns: dict[str, str] | None = None,
        id_from: list[str] | None = None,
        encoding: str = "utf-8-sig",
        timezone: str = "Asia/Shanghai",
        batch_size: int = 500,
        wait: float = 30.0,
        historical: bool = False,
        progress: Progress | None = None,
        encoding_option: str = "encoding: {} in the connector's options",
        **kwargs: Any,
    ) -> None:
        super().__init__(settings, **kwargs)
        self.path = path
        self.format: Format = format or guess_format(path)
        self.source = source
        self.event_type = event_type
        self.columns = columns or {}
        self.id_from = id_from or []
        self.encoding = encoding
        self.zone = ZoneInfo(timezone)
        self.batch_size = batch_size
        self.wait = wait
        self.historical = historical
        self.progress = progress
        self.encoding_option = encoding_option
        """How errors say to set the encoding, ``{}`` for it (``bus import``: ``--encoding {}``)."""
        self.report: ImportReport | None = None
        self._events: list[tuple[int, Envelope]] = []
        self._labels: dict[str, str] = {}
        """The file's name for an envelope path (``payload.amount`` -> ``罚款金额``)."""

    @classmethod
    def from_options(cls, settings: Settings, name: str, options: Options) -> Self:
        """Build from a checked ``Options`` (how ``bus connect`` makes one)."""
        return cls(settings, name=name, **options.model_dump())

    # --- checking ---------------------------------------------------------------------------

    def check(self) -> ImportReport:
        """Read and check every row; publish nothing. The report's ``rejections`` say why."""
        t0 = time.perf_counter()
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read {self.path}: {exc}") from None
        report = ImportReport(str(self.path), self.format, hashlib.sha256(data).hexdigest())
        directory = Directory.load(self.settings.departments_file)
        events: list[tuple[int, Envelope]] = []
        seen: dict[str, int] = {}
        rows = list(self._rows(data, report))
        report.rows = len(rows) + len({r.line for r in report.rejections})
        for i, (line, row) in enumerate(rows, 1):
            try:
                event = self._event(row, line, report.sha256)
                directory.authorise(event.source, event.event_type)
            except BusError as exc:
                report.rejections += [
                    dataclasses.replace(r, field=self._label(r.field))
                    for r in _rejections(line, exc)
                ]
            else:
                eid = str(event.event_id)
                if eid in seen:
                    report.rejections.append(Rejection(
                        line, "event_id", "import.duplicate_row",
                        f"event_id {eid} is also on line {seen[eid]}",
                    ))  # fmt: skip
                else:
                    seen[eid] = line
                    events.append((line, event))
            if self.progress and (i % 200 == 0 or i == len(rows)):
                self.progress("validating", i, len(rows))
        report.rejections.sort(key=lambda r: r.line)  # stable: a row's fields stay in order
        report.results = [
            RowResult(line, str(e.event_id), e.event_type, e.subject) for line, e in events
        ]
        report.seconds = time.perf_counter() - t0
        self._events = events
        self.report = report
        return report

    def _rows(self, data: bytes, report: ImportReport) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line number, raw row) for every row; unreadable lines go straight to rejections."""
        try:
            text = data.decode(self.encoding)
        except UnicodeDecodeError as exc:
            raise EncodingMismatch(
                self.path, self.encoding, data, exc, self.encoding_option
            ) from None
        except LookupError:
            raise ConfigurationError(
                f"unknown encoding {self.encoding!r}", reason="import.encoding"
            ) from None
        if self.format == "jsonl":  # key paths as written, but for renamed top-level keys
            self._labels = {name: key for key, name in self.columns.items()}
            yield from self._jsonl_rows(text, report)
        else:
            yield from self._csv_rows(text, report)

    def _jsonl_rows(self, text: str, report: ImportReport) -> Iterator[tuple[int, dict[str, Any]]]:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = load_json(line)
            except DecodeError as exc:  # not JSON, or nested too deeply (schema.too_deep)
                report.rejections.append(Rejection(n, None, exc.reason, exc.message))
                continue
            if not isinstance(obj, dict):
                report.rejections.append(Rejection(
                    n, None, "schema.decode", f"not a JSON object but {type(obj).__name__}"
                ))  # fmt: skip
                continue
            yield n, {self.columns.get(str(k), str(k)): v for k, v in obj.items()}

    def _csv_rows(self, text: str, report: ImportReport) -> Iterator[tuple[int, dict[str, Any]]]:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            report.rejections.append(Rejection(1, None, "import.csv", f"header: {exc}"))
            return
        names = [self.columns.get(h.strip(), h.strip()) for h in header]
        self._labels = {_path(n): h.strip() for h, n in zip(header, names, strict=True)}
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            report.rejections.append(Rejection(
                1, None, "import.csv", f"columns named twice: {', '.join(dupes)}"
            ))  # fmt: skip
            return
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                report.rejections.append(Rejection(start, None, "import.csv", str(exc)))
                return  # the reader cannot resync after a broken quote: stop here
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(names):
                report.rejections.append(Rejection(
                    start, None, "import.csv",
                    f"{len(cells)} cells but the header has {len(names)} columns",
                ))  # fmt: skip
                continue
            yield start, self._csv_object(dict(zip(names, cells, strict=True)))

    def _csv_object(self, cells: dict[str, str]) -> dict[str, Any]:
        """A CSV row as an envelope dict: envelope columns at the top, the rest in payload."""
        obj: dict[str, Any] = {}
        payload: dict[str, Any] = {}
        for name, raw in cells.items():
            value = raw.strip()
            if not value:
                continue
            if name in ENVELOPE_COLUMNS:
                obj[name] = value
                continue
            target = payload
            *parents, leaf = name.removeprefix("payload.").split(".")
            for p in parents:
                target = target.setdefault(p, {})
            target[leaf] = value
        if "schema_version" in obj and obj["schema_version"].isdigit():
            obj["schema_version"] = int(obj["schema_version"])
        if "occurred_at" in obj:
            obj["occurred_at"] = self._local_time(obj["occurred_at"])
        obj["payload"] = payload
        return obj

    def _label(self, field: str | None) -> str | None:
        """``field`` (an envelope path) as the file names it; see ``Rejection``."""
        if field is None:
            return None
        path = _path(field) if self.format == "csv" else field
        parts = path.split(".")
        for i in range(len(parts), 0, -1):  # the longest column that holds the field
            head = ".".join(parts[:i])
            if head in self._labels:
                return ".".join([self._labels[head], *parts[i:]])
        if self.format == "csv":  # no column: the header that would have held it
            return path.removeprefix("payload.")
        return path

    def _local_time(self, value: str) -> str:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return value  # the schema says what is wrong with it
        if when.tzinfo is None:
            when = when.replace(tzinfo=self.zone)
        return when.isoformat()

    def _event(self, row: dict[str, Any], line: int, sha256: str) -> Envelope:
        if self.event_type is not None:
            row.setdefault("event_type", self.event_type)
        if self.source is not None:
            found = row.setdefault("source", self.source)
            if found != self.source:
                raise ConnectorError(
                    f"row says source {found!r}, the import is for {self.source}",
                    reason="import.source_mismatch",
                )
        if "event_id" not in row:
            row["event_id"] = str(self._derived_id(row, line, sha256))
        return self.codec.from_json(row)

    def _derived_id(self, row: dict[str, Any], line: int, sha256: str) -> uuid.UUID:
        if not self.id_from:
            return uuid.uuid5(NAMESPACE, f"{sha256}:{line}")
        values = []
        for name in self.id_from:
            value: Any = row if name in ENVELOPE_COLUMNS else row.get("payload", {})
            for part in name.removeprefix("payload.").split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value in (None, ""):
                raise _missing(name)
            values.append(str(value))
        return uuid.uuid5(NAMESPACE, "\x1f".join([str(row.get("event_type")), *values]))

    # --- publishing -------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the whole file before connecting: a refused file never touches the bus."""
        report = await asyncio.to_thread(self.check)
        if report.rejections:
            self.metrics.failures.labels(self.name, ImportRejected.reason).inc()
            raise ImportRejected(report)
        await super().start()

    async def run(self) -> None:
        """Publish the checked rows in batches; then collect the bus's verdicts."""
        report = self.report
        if report is None or report.rejections:
            raise ConnectorError(f"{self.name}: run() before start()", reason="connector.state")
        t0 = time.perf_counter()
        start = await verdict_offsets(self.settings) if self.wait > 0 else {}
        verdicts: list[Verdict] = []
        total = len(self._events)
        for i in range(0, total, self.batch_size):
            if self.stopping:
                return  # re-running publishes the same ids again: no second effect
            batch = self._events[i : i + self.batch_size]
            receipts = await self.produce([e for _, e in batch], historical=self.historical)
            verdicts += [
                Verdict(line, str(e.event_id), e.event_type, f"{r.topic}/{r.partition}/{r.offset}")
                for (line, e), r in zip(batch, receipts, strict=True)
            ]
            report.published += len(batch)
            if self.progress:
                self.progress("publishing", report.published, total)
        if self.wait > 0 and verdicts:
            await _collect(self.settings, start, verdicts, self.wait)
        for result, v in zip(report.results, verdicts, strict=True):
            result.status = _status(v, waited=self.wait > 0)
            result.topic, result.reason, result.error = v.topic, v.reason, v.error
        report.seconds += time.perf_counter() - t0


def guess_format(path: Path) -> Format:
    """``csv`` or ``jsonl`` from the file name; anything else must be said explicitly."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise ConfigurationError(f"cannot tell the format of {path.name}: pass format csv or jsonl")


def _status(v: Verdict, *, waited: bool) -> str:
    if v.accepted:
        return "accepted"
    if v.reason:
        return "duplicate" if v.reason.startswith("duplicate.") else "rejected"
    return "unconfirmed" if waited else "published"


def _missing(name: str) -> ValidationFailed:
    return ValidationFailed(
        f"{name}: needed for the event id (id_from) but empty", field=name,
        reason="import.id_field",
    )  # fmt: skip


def _path(name: str) -> str:
    """A column or field name as an envelope path: ``amount`` -> ``payload.amount``."""
    if name in ENVELOPE_COLUMNS or name == "payload" or name.startswith("payload."):
        return name
    return f"payload.{name}"


def _rejections(line: int, exc: BusError) -> list[Rejection]:
    """One rejection per wrong field, each with its own reason."""
    if isinstance(exc, ValidationFailed) and len(exc.problems) > 1:
        return [Rejection(line, p.field, p.reason, p.message) for p in exc.problems]
    return [_rejection(line, exc)]


def _rejection(line: int, exc: BusError) -> Rejection:
    name = getattr(exc, "field", None)
    if name is None and exc.reason.startswith("auth."):
        name = "source" if exc.reason == "auth.unknown_source" else "event_type"
    if name is None and exc.reason == "import.source_mismatch":
        name = "source"
    if name is None and exc.reason == "schema.unknown_type":
        name = "event_type"
    message = exc.message
    if name and message.startswith(f"{name}: "):
        message = message[len(name) + 2 :]
    return Rejection(line, name, exc.reason, message)


__all__ = [
    "EncodingMismatch",
    "FileImportSource",
    "ImportRejected",
    "ImportReport",
    "Rejection",
    "RowResult",
    "guess_format",
]
