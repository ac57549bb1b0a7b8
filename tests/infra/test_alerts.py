"""Alert rules and the Grafana dashboard name only metrics of the one exported list,
infra/monitoring/metrics.txt, and cover every condition on-call must hear about."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from tests.infra.infra_kit import INFRA

MONITORING = INFRA / "monitoring"
REQUIRED_ALERTS = {
    "FreshrankBreakerOpen": "freshrank_breaker_open",
    "FreshrankFallbackRateHigh": "freshrank_rank_fallback_total",
    "FreshrankOnlineWeightsStale": "freshrank_online_weight_age_seconds",
    "FreshrankEventLogLag": "freshrank_event_log_lag_seconds",
    "FreshrankFeaturesStale": "freshrank_feature_staleness_seconds",
    "FreshrankCanaryAborted": "freshrank_canary_aborted_total",
    "FreshrankTrainingJobFailed": "freshrank_base_train_runs_total",
}
# PromQL words that are not metric names (functions, aggregations, keywords).
PROMQL = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "group",
    "count_values", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
    "or", "unless", "offset", "rate", "irate", "increase", "delta", "idelta", "deriv", "resets",
    "changes", "histogram_quantile", "time", "timestamp", "vector", "scalar", "abs", "absent",
    "absent_over_time", "clamp_min", "clamp_max", "label_replace", "label_join", "sort", "sort_desc",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
    "last_over_time", "predict_linear", "round", "ceil", "floor", "exp", "ln", "log2", "log10",
}


def exported() -> dict[str, str]:
    """name -> type, from metrics.txt."""
    out = {}
    for line in (MONITORING / "metrics.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, kind = line.split()[:2]
            out[name] = kind
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (labels, durations, strings removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", "", text)  # Grafana variables
    words = set(re.findall(r"(?<![\w.])[A-Za-z_:][\w:]*", text))
    return {w for w in words - PROMQL if not re.fullmatch(r"\d+[smhdwy]?", w)}


def known(name: str, metrics: dict[str, str]) -> bool:
    if name in metrics:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and metrics.get(base) == "histogram":
            return True
    return False


def rules() -> list[dict]:
    document = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_the_metric_list_is_prometheus_style_and_freshrank_named() -> None:
    metrics = exported()
    assert metrics
    for name, kind in metrics.items():
        assert re.fullmatch(r"freshrank_[a-z0-9_]+", name), name
        assert kind in {"counter", "gauge", "histogram", "summary"}, name
        assert name.endswith("_total") == (kind == "counter"), f"{name}: counters end in _total"


def test_every_required_alert_exists_on_its_metric() -> None:
    by_name = {rule["alert"]: rule for rule in rules()}
    for alert, metric in REQUIRED_ALERTS.items():
        assert alert in by_name, alert
        assert metric in metric_names(by_name[alert]["expr"]), alert


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_each_rule_is_complete_and_names_only_exported_metrics(rule: dict) -> None:
    assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
    assert rule["labels"]["severity"] in {"page", "ticket"}
    assert rule["annotations"]["summary"]
    if "for" in rule:
        assert re.fullmatch(r"\d+[smh]", rule["for"])
    names = metric_names(rule["expr"])
    assert names, rule["expr"]
    unknown = {n for n in names if not known(n, exported())}
    assert not unknown, f"{rule['alert']}: not in metrics.txt: {sorted(unknown)}"


def test_the_dashboard_charts_the_same_metrics() -> None:
    metrics = exported()
    charted: set[str] = set()
    for expr in dashboard_exprs():
        names = metric_names(expr)
        unknown = {n for n in names if not known(n, metrics)}
        assert not unknown, f"{expr}: not in metrics.txt: {sorted(unknown)}"
        charted |= names
    alerted = set().union(*(metric_names(rule["expr"]) for rule in rules()))
    assert alerted <= charted, f"alerted but not charted: {sorted(alerted - charted)}"
    bases = charted | {re.sub(r"_(bucket|sum|count)$", "", n) for n in charted if n not in metrics}
    assert set(metrics) <= bases, f"exported but not charted: {sorted(set(metrics) - bases)}"


def test_the_metric_check_can_fail() -> None:
    assert metric_names('sum by (code) (rate(freshrank_rank_requests_total{code="OK"}[5m])) > 0.5') == {
        "freshrank_rank_requests_total"
    }
    assert not known("freshrank_typo_total", exported())
    assert known("freshrank_rank_latency_seconds_bucket", exported())
    assert not known("freshrank_breaker_open_bucket", exported())
