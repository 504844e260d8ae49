"""The shipped Prometheus config, rules and dashboard: promtool accepts them, their unit tests
pass, and every metric they use (and every metric the code exports) is documented."""

from __future__ import annotations

import json
import queue
import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from gpuqueue.observability import nvml
from gpuqueue.queue.config import PoolConfig, QueueConfig
from gpuqueue.observability.metrics import QueueMetrics, process_registry
from gpuqueue.queue.models import Attempt, JobRecord, JobSpec
from gpuqueue.scheduler import make_scheduler
from gpuqueue.scheduler.base import JobRequest
from gpuqueue.queue.states import Priority
from obstools import PROMTOOL, Scrape, fake_nvml, needs_promtool

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = sorted((PROM / "rules").glob("*.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "gpuqueue-dashboard.json"
DOCS = (ROOT / "docs" / "metrics.md").read_text()

NAME = re.compile(r"\b(gpuqueue(?::[a-z0-9_]+:[a-z0-9_]+|_[a-z0-9_]+))")
SUFFIXES = ("_bucket", "_count", "_sum")


def _base(name: str) -> str:
    for s in SUFFIXES:
        if name.endswith(s) and not name.endswith("_seconds" + s[:-1]):
            return name[: -len(s)]
    return name


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=PROM)


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    out = _run("check", "rules", *[str(p) for p in RULES])
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_rule_unit_tests_pass() -> None:
    tests = sorted((PROM / "tests").glob("*.test.yml"))
    assert tests
    out = _run("test", "rules", *[str(p) for p in tests])
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_checks_the_scrape_config() -> None:
    # --syntax-only: the token file it names exists only on a real Prometheus host
    out = _run("check", "config", "--syntax-only", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def _rule_exprs() -> list[str]:
    exprs = []
    for p in RULES:
        for g in yaml.safe_load(p.read_text())["groups"]:
            exprs += [r["expr"] for r in g["rules"]]
    return exprs


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_every_metric_in_rules_and_dashboard_is_documented() -> None:
    used = {_base(n) for e in _rule_exprs() + _dashboard_exprs() for n in NAME.findall(e)}
    assert used
    missing = sorted(n for n in used if f"`{n}" not in DOCS)
    assert not missing, f"not in docs/metrics.md: {missing}"


def test_every_alert_has_a_runbook_section() -> None:
    for p in RULES:
        for g in yaml.safe_load(p.read_text())["groups"]:
            for r in g["rules"]:
                if "alert" in r:
                    assert f"### {r['alert']}\n" in DOCS, r["alert"]
                    assert r["annotations"]["runbook"] == f"docs/metrics.md#{r['alert'].lower()}"
                    assert r["labels"]["severity"] in ("critical", "warning")


def test_dashboard_is_importable_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dash["templating"]["list"]} >= {"datasource", "pool"}


def test_every_exported_metric_is_documented() -> None:
    """Export everything the code can (a busy fair-share scheduler, a running job with training
    metrics, a stand-in GPU, a worker's process registry) and look each family up in the docs."""
    cfg = QueueConfig(pools={"p": PoolConfig(nodes={"n1": 2})})
    sched = make_scheduler(cfg, "gpuqueue")
    sched.submit(JobRequest(id="j-000000000001", user="u", pool="p", gpus=2, priority=Priority.HIGH), 1.0)
    sched.tick(1.0)
    sched.submit(JobRequest(id="j-000000000002", user="u", pool="p", gpus=1), 2.0)
    m = QueueMetrics()
    m.init_pools(["p"])
    m.collect_scheduler(lambda: sched)
    m.registry.register(nvml.NvmlCollector(nvml.NvmlSession(module=fake_nvml(
        [{"uuid": "GPU-1", "util": 5, "mutil": 1, "used": 1, "total": 2, "temp": 30, "mw": 1000,
          "ecc": {0: 0, 1: 0}, "remap": (0, 0, 0, 0)}], queue.Queue())), watch_xid=True))
    job = JobRecord(id="j-000000000001", owner="u", spec=JobSpec(kind="command", command=["x"], pool="p"),
                    attempts=[Attempt(number=1, node="n1", gpu_ids=[0, 1], started_at=1.0)])
    m.on_event("started", {"job": job})
    m.on_event("event", {"job": job, "type": "metrics", "data": {"step": 1, "loss": 1.0}})
    m.on_event("event", {"job": job, "type": "progress", "data": {"done": 1, "total": 2}})
    m.observe_request("JobsHandler", "GET", 200, 0.01)
    text = generate_latest(m.registry).decode()
    worker = process_registry("worker", node="n1", nvml=False)
    text += generate_latest(worker).decode()
    families = {n for n, t in Scrape(text).types.items() if n.startswith("gpuqueue_")}
    expected_types = Scrape(text).types
    assert len(families) > 40
    missing = []
    for fam in sorted(families):
        kind = expected_types[fam]
        shown = fam + "_total" if kind == "counter" else fam
        if fam.endswith("_created"):
            continue  # prometheus-client's creation time of each counter and histogram series
        if f"`{shown}`" not in DOCS:
            missing.append(shown)
    assert not missing, f"exported but not in docs/metrics.md: {missing}"
    for w in list(nvml._watchers.values()):
        w.stop()
