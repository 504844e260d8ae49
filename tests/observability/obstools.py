"""Helpers for the observability tests: scrape, parse, and find promtool."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any, Optional

import pytest
from prometheus_client.parser import text_string_to_metric_families

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus); CI installs it"
)


class Scrape:
    """One parsed scrape: family types and sample values by (name, labels)."""

    def __init__(self, text: str):
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for fam in text_string_to_metric_families(text):
            self.types[fam.name] = fam.type
            for s in fam.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def get(self, metric: str, /, **labels: str) -> Optional[float]:
        """The value of the one sample with exactly these labels, or None."""
        return self.samples.get((metric, frozenset(labels.items())))

    def sum(self, metric: str, /, **labels: str) -> float:
        """Sum over the samples of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == metric and want <= set(ls))

    def series(self, metric: str, /, **labels: str) -> list[dict[str, str]]:
        want = set(labels.items())
        return [dict(ls) for (n, ls) in self.samples if n == metric and want <= set(ls)]


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


def scrape_server(server: Any, accept: Optional[str] = None) -> Scrape:
    import requests

    headers = dict(server.headers)
    if accept:
        headers["Accept"] = accept
    r = requests.get(server.url + "gpuqueue/metrics", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return Scrape(r.text)
