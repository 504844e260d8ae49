"""docs/openapi.yaml is a valid OpenAPI document and describes exactly the routes we serve."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from openapi_spec_validator import validate

from gpuqueue.queue.models import JobSpec, SubmitRequest
from jupyter_gpuqueue.handlers import handlers

SPEC = yaml.safe_load((Path(__file__).parents[2] / "docs" / "openapi.yaml").read_text())


def test_spec_is_valid_openapi():
    validate(SPEC)


def test_every_route_is_documented_and_every_documented_path_is_served():
    served = set()
    for pattern, _ in handlers():
        if not pattern.startswith("/gpuqueue/api"):
            continue
        path = pattern.removeprefix("/gpuqueue/api") or "/"
        served.add(re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path))
    assert served == set(SPEC["paths"])


def test_schemas_match_the_pydantic_models():
    schemas = SPEC["components"]["schemas"]
    assert set(schemas["JobSpec"]["properties"]) == set(JobSpec.model_fields)
    assert set(schemas["SubmitRequest"]["properties"]) == set(SubmitRequest.model_fields)


def test_schemathesis_finds_no_5xx_and_no_answer_off_the_spec(jupyter_server, tmp_path):
    """Every operation fuzzed (valid and invalid data, and sequences of calls) against a real
    embedded server; the same run against the cluster's API is in tests/cluster/test_api.py."""
    from helpers.fuzz import fuzz

    r = fuzz(jupyter_server.url + "gpuqueue/api", jupyter_server.token, tmp_path / "fuzz")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "failure" not in r.stdout.split("SUMMARY")[-1] and "errored" not in r.stdout, r.stdout[-3000:]
    log = jupyter_server.log_path.read_text(errors="replace")
    assert "Traceback" not in log and " 500 " not in log, log[-3000:]
