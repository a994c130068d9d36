"""The dashboard and the alerts query only what the bus's processes export.

A panel over a metric that does not exist shows "No data" for ever, and an alert over one
never fires; neither fails anywhere. So every PromQL expression in ``deploy/grafana`` and
``deploy/prometheus`` is parsed here, and each metric and label it names is checked against
the registries the worker, the gateway and ``bus connect`` really serve.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from bus.settings import Settings
from bus.streaming.faust_metrics import FaustMetrics
from bus.streaming.metrics import GatewayMetrics, Metrics
from connectors.base import ConnectorMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/bus.json"
RULES = ROOT / "deploy/prometheus/rules/bus.yml"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
KUBERNETES_SCRAPE = ROOT / "deploy/prometheus/kubernetes.yml"
RULE_TESTS = ROOT / "deploy/prometheus/tests/bus_test.yml"
OPERATIONS = ROOT / "docs/operations.md"

# --- a PromQL reader: enough of the grammar to find every metric and label an expression names

AGGREGATIONS = frozenset({
    "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values", "limitk", "limit_ratio",
})  # fmt: skip
FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "double_exponential_smoothing", "exp", "floor", "histogram_avg",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
    "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn",
    "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt",
    "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp",
    "vector", "year",
})  # fmt: skip
GROUPING = frozenset({"by", "without"})
MATCHING = frozenset({"on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "start", "end"})

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])                # [5m], [$__rate_interval], [1h:1m]
  | (?P<var>\$\{?\w+\}?)                 # Grafana variables outside strings
  | (?P<num>\d[\w.]*|\.\d+)              # 0.95, 1e3, 5m (after offset)
  | (?P<ident>[A-Za-z_:][\w:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}@])
    """,
    re.VERBOSE,
)


@dataclass
class Selector:
    """A metric named in an expression, with the matchers of its ``{...}``."""

    metric: str
    matchers: list[tuple[str, str, str]]  # (label, operator, value)
    position: int  # token index, to know which aggregation it is inside


@dataclass
class Grouping:
    """A ``by (...)``/``without (...)`` (scope: its aggregation) or ``on (...)`` (scope: all)."""

    keyword: str
    labels: list[str]
    scope: tuple[int, int]


@dataclass
class Query:
    expr: str
    selectors: list[Selector] = field(default_factory=list)
    groupings: list[Grouping] = field(default_factory=list)


def tokenize(expr: str) -> list[tuple[str, str]]:
    """Tokens without whitespace and Grafana variables; an unknown character is an error."""
    tokens, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read {expr[pos : pos + 20]!r} in {expr!r}")
        kind = m.lastgroup or ""
        if kind not in ("ws", "var"):
            tokens.append((kind, m.group()))
        pos = m.end()
    return tokens


def parse(expr: str) -> Query:
    """Every metric selector and grouping of ``expr``; unknown functions are errors."""
    tokens = tokenize(expr)
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for i, (_, text) in enumerate(tokens):
        if text == "(":
            stack.append(i)
        elif text == ")":
            if not stack:
                raise ValueError(f"unbalanced ')' in {expr!r}")
            pairs[stack.pop()] = i
    if stack:
        raise ValueError(f"unbalanced '(' in {expr!r}")
    closing = {close: open_ for open_, close in pairs.items()}

    def text_at(i: int) -> str:
        return tokens[i][1] if i < len(tokens) else ""

    q = Query(expr)
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "op" and text == "{":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        if kind != "ident":
            i += 1
            continue
        nxt = text_at(i + 1)
        if text in GROUPING or text in MATCHING:
            labels: list[str] = []
            j = i + 1
            if nxt == "(":
                end = pairs[i + 1]
                labels = [t for k, t in tokens[i + 2 : end] if k == "ident"]
                j = end + 1
            if text in MATCHING:
                scope = (0, len(tokens))
            elif text_at(i - 1) in AGGREGATIONS:  # sum by (x) (expr)
                scope = (j, pairs[j])
            elif text_at(i - 1) == ")" and text_at(closing[i - 1] - 1) in AGGREGATIONS:
                scope = (closing[i - 1], i - 1)  # sum (expr) by (x)
            else:
                raise ValueError(f"{text!r} outside an aggregation in {expr!r}")
            q.groupings.append(Grouping(text, labels, scope))
            i = j
        elif text in AGGREGATIONS and nxt in ("(", "by", "without"):
            i += 1
        elif nxt == "(" and text not in KEYWORDS:
            if text not in FUNCTIONS:
                raise ValueError(f"unknown function {text!r} in {expr!r}")
            i += 1
        elif text in KEYWORDS:
            i += 1
        else:
            matchers: list[tuple[str, str, str]] = []
            j = i + 1
            if nxt == "{":
                j += 1
                while text_at(j) != "}":
                    if text_at(j) == ",":
                        j += 1
                        continue
                    label, op, value = tokens[j][1], tokens[j + 1][1], tokens[j + 2][1]
                    if tokens[j][0] != "ident" or tokens[j + 2][0] != "str":
                        raise ValueError(f"cannot read the matchers of {text} in {expr!r}")
                    matchers.append((label, op, value[1:-1]))
                    j += 3
                j += 1
            q.selectors.append(Selector(text, matchers, i))
            i = j
    return q


# --- what the processes export


def _touched(metrics: object) -> CollectorRegistry:
    """The object's registry after one series of each labelled metric exists, so it shows."""
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*("x" for _ in metric._labelnames))
    registry: CollectorRegistry = metrics.registry  # type: ignore[attr-defined]
    return registry


def _samples(registry: CollectorRegistry) -> dict[str, set[str]]:
    names: dict[str, set[str]] = defaultdict(set)
    for family in registry.collect():
        for sample in family.samples:
            names[sample.name] |= set(sample.labels)
    return names


def _compose_connector() -> CollectorRegistry | None:
    """The registry of the connector docker-compose.yml runs: its kind may add metrics."""
    from connectors import registry

    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    connect = data["services"]["connect"]
    text = data["configs"][connect["configs"][0]["source"]]["content"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "connectors.yaml")
        path.write_text(re.sub(r"\$\$\{\w+\}", "x", text))  # passwords from the environment
        entry = registry.find(path, connect["command"][1])
    try:
        connector = registry.build(Settings(), entry)
    except ModuleNotFoundError:  # the kind's module is not in this tree (yet)
        return None
    return _touched(connector.metrics)


@functools.cache
def exported_by_job() -> dict[str, dict[str, set[str]]]:
    """Sample names and their labels, per Prometheus job (see deploy/prometheus)."""
    connect = _samples(_touched(ConnectorMetrics()))
    if (extra := _compose_connector()) is not None:
        for name, labels in _samples(extra).items():
            connect.setdefault(name, set()).update(labels)
    worker = Metrics()
    _touched(FaustMetrics(worker.registry))  # the worker serves Faust's series beside its own
    return {
        "bus-worker": _samples(_touched(worker)),
        "bus-gateway": _samples(_touched(GatewayMetrics())),
        "bus-connect": connect,
    }


def target_labels() -> set[str]:
    """Labels Prometheus adds to every series: job, instance, and what relabelling sets."""
    labels = {"job", "instance"}
    for job in yaml.safe_load(KUBERNETES_SCRAPE.read_text())["scrape_configs"]:
        for rule in job.get("relabel_configs", []):
            name = rule.get("target_label", "")
            if name and not name.startswith("__"):
                labels.add(name)
    return labels


def scrape_jobs() -> set[str]:
    return {j["job_name"] for j in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}


def problems(query: Query) -> list[str]:
    """What in ``query`` no process exports: metrics, labels, jobs. Empty when all is well."""
    by_job = exported_by_job()
    exported: dict[str, set[str]] = defaultdict(set)
    for samples in by_job.values():
        for name, labels in samples.items():
            exported[name] |= labels
    extra = target_labels()
    exported["up"] = set()  # made by Prometheus for every target
    out: list[str] = []
    for s in query.selectors:
        if s.metric not in exported:
            out.append(f"{s.metric} is not exported (in {query.expr!r})")
            continue
        for label, op, value in s.matchers:
            if label not in exported[s.metric] | extra:
                out.append(f"{s.metric} has no label {label!r} (in {query.expr!r})")
            if label == "job":
                jobs = {j for j in scrape_jobs() if _matches(op, value, j)}
                if not jobs:
                    out.append(f"no scrape job matches job{op}{value!r} (in {query.expr!r})")
                if s.metric != "up" and not any(s.metric in by_job.get(j, {}) for j in jobs):
                    out.append(f"job{op}{value!r} does not export {s.metric}")
    for g in query.groupings:
        inside = [s for s in query.selectors if g.scope[0] <= s.position < g.scope[1]]
        for label in g.labels:
            if g.keyword in MATCHING:
                if not any(label in exported.get(s.metric, set()) | extra for s in inside):
                    out.append(f"{g.keyword} ({label}): no metric has it (in {query.expr!r})")
                continue
            for s in inside:
                if s.metric in exported and label not in exported[s.metric] | extra:
                    out.append(
                        f"{g.keyword} ({label}): {s.metric} has no such label (in {query.expr!r})"
                    )
    return out


def _matches(op: str, pattern: str, value: str) -> bool:
    if op in ("=", "=="):
        return value == pattern
    if op == "!=":
        return value != pattern
    hit = re.fullmatch(pattern, value) is not None
    return hit if op == "=~" else not hit


# --- the files


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in container.get("panels", []):
        yield p
        yield from panels(p)  # a collapsed row keeps its panels inside


def dashboard_queries(board: dict[str, Any]) -> list[Query]:
    queries = [parse(t["expr"]) for p in panels(board) for t in p.get("targets", [])]
    for var in board.get("templating", {}).get("list", []):
        q = var.get("query")
        text = q.get("query", "") if isinstance(q, dict) else str(q or "")
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text.strip())
        assert m, f"variable {var['name']}: only label_values(metric, label) is checked"
        query = parse(m.group(1))
        query.groupings.append(Grouping("by", [m.group(2)], (0, 10**6)))
        queries.append(query)
    return queries


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


# --- the reader itself: it must catch what the checks rely on


def test_reader_finds_metrics_labels_and_groupings() -> None:
    q = parse(
        "histogram_quantile(0.95, sum by (matter, le) (rate(bus_decision_seconds_bucket"
        '{matter=~"$m|x", job="bus-worker"}[$__rate_interval] offset 1h))) > 0.5 '
        "and on (matter) sum(bus_tasks) by (matter)"
    )
    assert [(s.metric, [m[0] for m in s.matchers]) for s in q.selectors] == [
        ("bus_decision_seconds_bucket", ["matter", "job"]),
        ("bus_tasks", []),
    ]
    assert [(g.keyword, g.labels) for g in q.groupings] == [
        ("by", ["matter", "le"]),
        ("on", ["matter"]),
        ("by", ["matter"]),
    ]
    assert problems(q) == []


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("sum(rate(bus_events_in[5m]))", "bus_events_in is not exported"),  # no _total
        ("histogram_quantile(0.9, rate(bus_batch_seconds[5m]))", "bus_batch_seconds is not"),
        ('bus_tasks{status="overdue"}', "bus_tasks has no label 'status'"),
        ("sum by (department) (rate(bus_events_in_total[5m]))", "by (department)"),
        ("sum(bus_consumer_lag) without (reason)", "without (reason)"),
        ('up{job="bus-workers"}', "no scrape job matches"),
        ('bus_gateway_requests_total{job="bus-worker"}', "does not export"),
    ],
)
def test_a_query_of_something_not_exported_is_reported(expr: str, expected: str) -> None:
    found = problems(parse(expr))
    assert any(expected in p for p in found), found


def test_reader_refuses_what_it_cannot_check() -> None:
    with pytest.raises(ValueError, match="unknown function 'rat'"):
        parse("rat(bus_events_in_total[5m])")
    with pytest.raises(ValueError, match="without a metric name"):
        parse('{__name__="bus_tasks"}')


def test_a_dashboard_panel_over_a_missing_metric_fails_the_check() -> None:
    board = dashboard()
    board["panels"].append(
        {"type": "timeseries", "targets": [{"expr": "rate(bus_nope_total[5m])"}]}
    )
    found = [p for q in dashboard_queries(board) for p in problems(q)]
    assert found == ["bus_nope_total is not exported (in 'rate(bus_nope_total[5m])')"]


# --- the real dashboard and rules


def test_every_dashboard_query_names_exported_metrics_and_labels() -> None:
    queries = dashboard_queries(dashboard())
    assert len(queries) > 30
    found = [p for q in queries for p in problems(q)]
    assert found == []


def test_every_alert_names_exported_metrics_and_labels() -> None:
    found = [p for r in rules() for p in problems(parse(r["expr"]))]
    assert found == []


def test_every_exported_metric_is_on_the_dashboard() -> None:
    """The dashboard is the operators' one screen: a new metric needs a panel."""
    shown = {s.metric for q in dashboard_queries(dashboard()) for s in q.selectors}
    families = set()
    for samples in exported_by_job().values():
        for name in samples:
            if not name.endswith("_created"):
                families.add(re.sub(r"_(bucket|count|sum)$", "", name))
    shown_families = {re.sub(r"_(bucket|count|sum)$", "", m) for m in shown}
    assert families - shown_families == set()


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    board = dashboard()
    rows = {p["title"] for p in board["panels"] if p["type"] == "row"}
    assert {"Throughput", "Latency", "Consumer lag", "Dead letters", "Tasks by department",
            "Connectors", "Gateway"} <= rows  # fmt: skip
    assert any(r.startswith("Faust:") for r in rows)
    tasks = [
        q for q in dashboard_queries(board) if any(s.metric == "bus_tasks" for s in q.selectors)
    ]
    assert any("department" in g.labels for q in tasks for g in q.groupings)


def test_dashboard_is_well_formed_for_provisioning() -> None:
    board = dashboard()
    assert board["uid"]
    assert board["title"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    for p in panels(board):
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == datasource["uid"], p["title"]
            assert p["targets"], p["title"]
            assert p.get("description"), f"{p['title']}: say what it shows"


def test_alert_rules_are_complete() -> None:
    headings = set(re.findall(r"^#+ (\S+)", OPERATIONS.read_text(encoding="utf-8"), re.MULTILINE))
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names))
    for r in rules():
        assert set(r) == {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert re.fullmatch(r"\d+[smhd]", r["for"]), r["alert"]
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r["annotations"]["summary"], r["alert"]
        assert r["annotations"]["runbook"] == f"docs/operations.md#{r['alert'].lower()}"
        assert r["alert"] in headings, f"{r['alert']}: no runbook section in docs/operations.md"


def test_alerts_cover_what_the_issue_asks_for() -> None:
    exprs = {r["alert"]: r["expr"] for r in rules()}
    asked = {
        "lag growing": ("BusConsumerLagGrowing", "bus_consumer_lag"),
        "dead letters spiking": ("BusDeadLettersSpiking", "bus_deadletters_total"),
        "tasks overdue": ("BusTasksOverdue", 'bus_tasks{state="overdue"}'),
        "worker down": ("BusWorkerDown", 'up{job="bus-worker"}'),
        "webhook failing": ("BusConnectorFailing", "bus_connector_failures_total"),
        "table recovery stuck": ("BusTableRecoveryStuck", "faust_table_recovery_remaining_offsets"),
    }
    for what, (alert, needle) in asked.items():
        assert needle in exprs.get(alert, ""), what


def test_prometheus_loads_the_rules_and_scrapes_every_process() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    mounts = dict(
        v.split(":")[1::-1] for v in compose["prometheus"]["volumes"] if v.startswith("./")
    )
    # the rule_files glob, seen from the host through the compose mount, finds the rules
    loaded = []
    for pattern in config["rule_files"]:
        for target, source in mounts.items():
            if pattern.startswith(target + "/"):
                host = ROOT / source / pattern[len(target) + 1 :]
                loaded += [p for p in host.parent.iterdir() if fnmatch.fnmatch(p.name, host.name)]
    assert loaded == [RULES]
    assert scrape_jobs() >= {"bus-worker", "bus-gateway", "bus-connect"}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                env = compose[name]["environment"]
                assert str(sd["port"]) == env["BUS_METRICS_PORT"], job["job_name"]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.split(":")
                assert ["--port", port] == compose[host]["command"][-2:], job["job_name"]


def test_kubernetes_scrape_gives_the_same_job_names() -> None:
    (job,) = yaml.safe_load(KUBERNETES_SCRAPE.read_text())["scrape_configs"]
    rules_ = job["relabel_configs"]
    keep = next(r for r in rules_ if r.get("action") == "keep" and r["source_labels"] == [
        "__meta_kubernetes_pod_label_app_kubernetes_io_component"])  # fmt: skip
    name = next(r for r in rules_ if r.get("target_label") == "job")
    for job_name in ("bus-worker", "bus-gateway", "bus-connect"):
        component = job_name.removeprefix("bus-")
        assert re.fullmatch(keep["regex"], component)
        assert name["replacement"].replace("$1", component) == job_name


def test_grafana_is_provisioned_with_the_dashboard() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    grafana = compose["grafana"]
    mounts = {}
    for v in grafana["volumes"]:
        source, target = v.split(":")[:2]
        if source.startswith("./"):
            assert (ROOT / source).is_dir(), source
            mounts[target] = ROOT / source
    providers = yaml.safe_load(
        (mounts["/etc/grafana/provisioning"] / "dashboards/bus.yml").read_text()
    )["providers"]
    (provider,) = providers
    assert (mounts[provider["options"]["path"]] / DASHBOARD.name) == DASHBOARD
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    (datasource,) = yaml.safe_load(
        (mounts["/etc/grafana/provisioning"] / "datasources/prometheus.yml").read_text()
    )["datasources"]
    host = re.fullmatch(r"http://([\w-]+):9090", datasource["url"])
    assert host
    assert host.group(1) in compose


# --- promtool, where it is installed (not needed: the checks above are the contract)

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool is not installed")


@needs_promtool
def test_promtool_accepts_the_rules_and_their_unit_tests() -> None:
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        run = subprocess.run([promtool or "", *args], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_promtool_accepts_the_compose_scrape_config(tmp_path: Path) -> None:
    config = PROMETHEUS.read_text().replace("/etc/prometheus/", f"{RULES.parent.parent}/")
    (tmp_path / "prometheus.yml").write_text(config)
    run = subprocess.run(
        [promtool or "", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
