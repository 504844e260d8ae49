"""docs/openapi.yaml is a valid OpenAPI document and describes exactly the routes we serve."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from openapi_spec_validator import validate

from gpuqueue.models import JobSpec, SubmitRequest
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
