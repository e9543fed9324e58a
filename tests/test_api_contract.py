"""Contract fuzzing with schemathesis: every route, with generated valid and invalid input, answers as its
OpenAPI document says — never a 5xx, always the OpenAI error envelope for errors.

The examples are derandomised so CI sees the same cases every run; `make fuzz` (TUNELAB_FUZZ=long) runs many more,
fresh each time. The stateful chains (upload → job → pause / cancel → delete) are in test_fuzz_stateful.py. All of schemathesis' checks run but one: `positive_data_acceptance` expects every schema-valid request to
succeed, and many cannot on meaning alone — an id that names no file, a file that is not `.jsonl`.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from schemathesis.checks import positive_data_acceptance
from hypothesis import HealthCheck, settings

from tunelab.app import create_app

OPENAPI = create_app(run_worker=False).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)
# Azure's `/openai` mirror of the same routes (not in the published document): fuzzed in the long run only.
azure = schemathesis.openapi.from_dict({**OPENAPI, "paths": {
    "/openai" + path.removeprefix("/v1"): item for path, item in OPENAPI["paths"].items() if path.startswith("/v1/")}})
AUTH = {"Authorization": "Bearer test-key"}
LONG = os.environ.get("TUNELAB_FUZZ") == "long"


def envelope(ctx, response, case) -> None:
    """Errors use the OpenAI shape, so the SDK can read them."""
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
        assert body["error"]["message"], body


@schema.parametrize()
@settings(max_examples=100 if LONG else 30, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=not LONG)
def test_every_route_keeps_its_contract(case, service):
    keeps_contract(case, service)


@pytest.mark.skipif(not LONG, reason="the long run of `make fuzz` (TUNELAB_FUZZ=long)")
@azure.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_azure_mirror_keeps_its_contract(case, service):
    keeps_contract(case, service)


def keeps_contract(case, service) -> None:
    response = case.call(base_url=service.base_url.removesuffix("/v1"), headers=AUTH)
    assert response.status_code < 500, (case.method, case.formatted_path, response.text)
    envelope(None, response, case)
    case.validate_response(response, headers=AUTH, excluded_checks=[positive_data_acceptance])

