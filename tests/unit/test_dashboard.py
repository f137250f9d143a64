"""The Grafana dashboards query what the worker's exporter exposes — metric and label names.

A panel whose PromQL names a metric (or a label) that worker/obs/metrics.py does not
expose shows "No data" without any error, so renaming a metric would break the
dashboard silently. This reads every PromQL expression of every dashboard under
deploy/grafana/dashboards (panel targets, rows' nested panels, annotations, query
variables), extracts the series and label names with a small PromQL tokenizer, and
checks them against the exposition text of a real PrometheusObserver driven until every
family exists. No broker, Grafana or Docker. (That Prometheus scrapes the port the
worker's compose service serves /metrics on is checked by test_deploy.py.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.core.config import EngineConfig
from worker.core.engine import Engine
from worker.core.types import Command, Event, Label, LifecycleEvent
from worker.obs.metrics import PrometheusObserver

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
SCRAPE_LABELS = {"job", "instance"}  # Prometheus adds them to every series it scrapes
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = GROUPING | {"offset", "bool", "and", "or", "unless", "atan2", "inf", "nan", "Inf", "NaN"}
MATCH_OPS = {"=", "!=", "=~", "!~"}
TOKEN = re.compile(r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])                               # [5m], [$__rate_interval], [1h:1m]
  | (?P<var>\$\{[^}]*\}|\$\w+|\[\[\w+\]\])               # Grafana template variables
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z]*)
  | (?P<name>[A-Za-z_:][\w:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>(){},@])
  | (?P<space>\s+)
""", re.VERBOSE)
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass
class Query:
    """One PromQL expression of a dashboard, where it comes from and its legend."""

    source: str
    expr: str
    legend: str = ""


@dataclass
class Parsed:
    """What an expression names: selectors (token index, metric, matched labels) and
    grouping clauses (keyword, labels, the token range of the expression they apply to)."""

    selectors: list[tuple[int, str, set[str]]] = field(default_factory=list)
    groupings: list[tuple[str, set[str], range]] = field(default_factory=list)


# --- the dashboards' queries ---------------------------------------------------------------


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, the ones nested in (collapsed) rows included."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def variable_query(var: dict[str, Any]) -> Query | None:
    """A query variable's PromQL: ``label_values(expr, label)`` (the label is checked like a
    legend's) or ``query_result(expr)``; other forms (``metrics()``, ``label_names()``) name none."""
    query = var.get("query") or ""
    query = query.get("query", "") if isinstance(query, dict) else query
    source = f"variable ${var.get('name')}"
    if m := re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", query, re.DOTALL):
        return Query(source, m[1], "{{" + m[2] + "}}")
    if m := re.fullmatch(r"\s*query_result\((.+)\)\s*", query, re.DOTALL):
        return Query(source, m[1])
    return None


def queries(dashboard: dict[str, Any]) -> Iterator[Query]:
    title = dashboard.get("title", "?")
    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield Query(f"{title} / panel {panel.get('title')!r}", target["expr"],
                            target.get("legendFormat", ""))
    for note in dashboard.get("annotations", {}).get("list", []):
        if note.get("expr"):
            legend = note.get("titleFormat", "") + note.get("textFormat", "")
            yield Query(f"{title} / annotation {note.get('name')!r}", note["expr"], legend)
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query" and (query := variable_query(var)):
            query.source = f"{title} / {query.source}"
            yield query


def dashboard_queries() -> list[Query]:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files, f"no dashboards in {DASHBOARDS}"
    return [q for path in files for q in queries(json.loads(path.read_text()))]


# --- a small PromQL reader: names only, not semantics ----------------------------------------


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens, at = [], 0
    while at < len(expr):
        m = TOKEN.match(expr, at)
        if m is None:
            raise ValueError(f"cannot read PromQL at {expr[at:]!r} in {expr!r}")
        if m.lastgroup != "space":
            tokens.append((m.lastgroup, m[0]))
        at = m.end()
    return tokens


def matching(tokens: list[tuple[str, str]], at: int, step: int) -> int:
    """Index of the bracket matching the one at ``at`` (step 1: forwards from "(" or "{",
    step -1: backwards from ")")."""
    depth = 0
    for i in range(at, len(tokens) if step > 0 else -1, step):
        depth += {"(": 1, "{": 1, ")": -1, "}": -1}.get(tokens[i][1], 0) * step
        if depth == 0:
            return i
    raise ValueError(f"unbalanced brackets in {' '.join(t for _, t in tokens)!r}")


def matchers(tokens: list[tuple[str, str]], at: int) -> tuple[dict[str, str], int]:
    """The label matchers of a ``{...}`` at ``at`` (label → quoted value) and the index after it."""
    if at >= len(tokens) or tokens[at][1] != "{":
        return {}, at
    end = matching(tokens, at, 1)
    found = {tokens[i][1]: tokens[i + 2][1] for i in range(at + 1, end - 1)
             if tokens[i][0] == "name" and tokens[i + 1][1] in MATCH_OPS}
    return found, end + 1


def scope(tokens: list[tuple[str, str]], at: int, end: int) -> range:
    """The tokens a grouping clause at ``at`` (its label list ending at ``end``) applies to:
    the aggregation's argument, after it (``sum by (x) (...)``) or before it (``sum(...) by (x)``);
    for vector matching (``on``, ``group_left``...) the whole expression."""
    if tokens[at][1] in {"by", "without"}:
        if end + 1 < len(tokens) and tokens[end + 1][1] == "(":
            return range(end + 1, matching(tokens, end + 1, 1) + 1)
        if at > 0 and tokens[at - 1][1] == ")":
            return range(matching(tokens, at - 1, -1), at)
    return range(len(tokens))


def parse(expr: str) -> Parsed:
    tokens, parsed, i = tokenize(expr), Parsed(), 0
    while i < len(tokens):
        kind, text = tokens[i]
        after = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if text in GROUPING and after == "(":
            end = matching(tokens, i + 1, 1)
            labels = {t for k, t in tokens[i + 2:end] if k == "name"}
            parsed.groupings.append((text, labels, scope(tokens, i, end)))
            i = end + 1
        elif text == "{" or (kind == "name" and text not in KEYWORDS and after not in {"(", "by", "without"}):
            found, nxt = matchers(tokens, i if text == "{" else i + 1)
            metric = text if kind == "name" else found.get("__name__", "").strip("\"'`")
            if metric:
                parsed.selectors.append((i, metric, set(found) - {"__name__"}))
            i = nxt
        else:
            i += 1
    return parsed


# --- what the exporter exposes --------------------------------------------------------------


def driven_observer() -> PrometheusObserver:
    """A real exporter over a real engine with a champion, a challenger, a previous champion
    on probation and a traffic split, every hook called once: every family is exposed."""
    worker = SimpleNamespace(engine=None, ready=True, _consumer=None)
    observer = PrometheusObserver(worker)  # a CollectorRegistry of its own
    worker.engine = engine = Engine(EngineConfig(warmup_labels=5), observer)
    for i in range(20):
        engine.process(Event(id=f"e{i}", features={"x": float(i % 3)}, label=i % 2 == 0))
    engine.apply(Command(type="promote", command_id="p1"))
    engine.apply(Command(type="set_split", command_id="s1", percent=50.0))
    engine.process(Event(id="e-last", features={"x": 1.0}, label=None))
    engine.process_label(Label(id="e-last", label=True))
    status = engine.status()
    assert None not in (status["test"], status["probation"], status["arms"], status["previous"])
    observer.event_scored("challenger")
    observer.bad_input("duplicate id")
    observer.pending_evicted("labels", "age", 1)
    observer.lifecycle(LifecycleEvent(type="drift_detected", detail={"role": "champion"}))
    observer.lifecycle(LifecycleEvent(type="rolled_back"))
    observer.observe_batch(0.01, 3)
    observer.observe_transaction(0.2)
    observer.observe_checkpoint(0.1)
    observer.dead_letter()
    observer.lag = [("events", 0, 5)]  # as the loop samples it from the consumer
    return observer


@pytest.fixture(scope="module")
def exposed() -> dict[str, set[str]]:
    """Series name → its label names, read back from the exposition text a scrape gets
    (so ``worker_events_total``, ``..._seconds_bucket`` with ``le``: what Prometheus stores)."""
    text = generate_latest(driven_observer().registry).decode()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


# --- the check ----------------------------------------------------------------------------


def label_problems(query: Query, parsed: Parsed, exposed: dict[str, set[str]]) -> Iterator[str]:
    for clause, labels, tokens in parsed.groupings:
        metrics = [m for at, m, _ in parsed.selectors if at in tokens and m in exposed]
        for label in sorted(labels - SCRAPE_LABELS):
            having = [m for m in metrics if label in exposed[m]]
            if metrics and (not having if clause in {"on", "ignoring", "group_left", "group_right"}
                            else len(having) < len(metrics)):
                missing = sorted(set(metrics) - set(having))
                yield f"{query.source}: label {label!r} of {clause} (...) is not on {', '.join(missing)}"
    if any(m not in exposed for _, m, _ in parsed.selectors):
        return  # the missing metric is the problem; its labels cannot be judged
    on_some = SCRAPE_LABELS.union(*(exposed[m] for _, m, _ in parsed.selectors))
    for label in sorted(set(LEGEND_LABEL.findall(query.legend)) - on_some):
        yield f"{query.source}: legend label {label!r} is on no metric of {query.expr!r}"


def problems(query: Query, exposed: dict[str, set[str]]) -> list[str]:
    parsed = parse(query.expr)
    if not parsed.selectors:
        return [f"{query.source}: no metric found in {query.expr!r}"]
    found = []
    for _, metric, labels in parsed.selectors:
        if metric not in exposed:
            found.append(f"{query.source}: metric {metric!r} is not exposed by worker/obs/metrics.py "
                         f"(in {query.expr!r})")
        for label in sorted(labels - exposed.get(metric, labels) - SCRAPE_LABELS):
            found.append(f"{query.source}: label {label!r} is not on {metric} "
                         f"(it has {sorted(exposed[metric])})")
    return found + list(label_problems(query, parsed, exposed))


def test_every_dashboard_query_names_exposed_metrics_and_labels(exposed: dict[str, set[str]]) -> None:
    found = [p for query in dashboard_queries() for p in problems(query, exposed)]
    if found:
        pytest.fail("the dashboard queries what the worker does not expose:\n" + "\n".join(found))


def test_the_reader_finds_names_not_functions_keywords_or_variables() -> None:
    parsed = parse('histogram_quantile(0.99, sum by (le, $group) (rate(a_seconds_bucket{kind="x",'
                   'instance=~"$instance"}[$__rate_interval] offset 5m)))'
                   ' / on (role) group_left (version) max without (view) (b_total) > bool 1e-3'
                   ' + sum(c) by (arm) + {__name__="d", view!="fading"}')
    assert [(m, labels) for _, m, labels in parsed.selectors] == [
        ("a_seconds_bucket", {"kind", "instance"}), ("b_total", set()), ("c", set()), ("d", {"view"})]
    groupings = {clause: labels for clause, labels, _ in parsed.groupings}
    assert groupings == {"by": {"arm"}, "on": {"role"}, "group_left": {"version"}, "without": {"view"}}
    by_le = next(tokens for clause, labels, tokens in parsed.groupings if labels == {"le"})
    assert [m for at, m, _ in parsed.selectors if at in by_le] == ["a_seconds_bucket"]


def test_queries_come_from_rows_annotations_and_variables() -> None:
    dashboard = {"title": "d", "panels": [
        {"type": "row", "title": "r", "panels": [{"title": "nested", "targets": [{"expr": "a"}]}]},
        {"title": "top", "targets": [{"expr": "b", "legendFormat": "{{x}}"}, {"refId": "no expr"}]}],
        "annotations": {"list": [{"name": "n", "expr": "c > 0", "titleFormat": "{{y}}"}]},
        "templating": {"list": [{"type": "query", "name": "v", "query": {"query": "label_values(e, z)"}},
                                {"type": "custom", "name": "w", "query": "1,2"}]}}
    assert [(q.source, q.expr, q.legend) for q in queries(dashboard)] == [
        ("d / panel 'nested'", "a", ""), ("d / panel 'top'", "b", "{{x}}"),
        ("d / annotation 'n'", "c > 0", "{{y}}"), ("d / variable $v", "e", "{{z}}")]


def test_a_renamed_metric_or_label_is_reported(exposed: dict[str, set[str]]) -> None:
    renamed = Query("worker / panel 'Events'", "sum by (servedby) (rate(worker_events_served_total[1m]))")
    assert problems(renamed, exposed) == [
        "worker / panel 'Events': metric 'worker_events_served_total' is not exposed by "
        "worker/obs/metrics.py (in 'sum by (servedby) (rate(worker_events_served_total[1m]))')"]
    wrong_labels = Query("p", 'sum by (served) (worker_events_total{role="champion"})', "{{arm}}")
    assert problems(wrong_labels, exposed) == [
        "p: label 'role' is not on worker_events_total (it has ['served_by'])",
        "p: label 'served' of by (...) is not on worker_events_total",
        "p: legend label 'arm' is on no metric of 'sum by (served) (worker_events_total{role=\"champion\"})'"]
    assert problems(Query("p", "worker_events"), exposed)  # a counter's family name is not a series
