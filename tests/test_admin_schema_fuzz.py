"""The admin API against its own OpenAPI document, with requests generated from it by
schemathesis: whatever a request holds, the gateway answers without a server error, with a
status and a body the document lists for that operation, and goes on serving."""

from __future__ import annotations

from pathlib import Path

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.schemas import APIOperation

from tests.conftest import GatewayProcess, MockProvider, standard_config

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_every_admin_operation_answers_as_documented(
    mock_provider: MockProvider, tmp_path: Path
) -> None:
    # A gateway of its own: the generated requests change users, teams and tokens.
    gateway = GatewayProcess(standard_config(mock_provider.url), tmp_path)
    try:
        schema = schemathesis.openapi.from_url(f"{gateway.url}/admin/v1/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 30
        for operation in operations:
            _answers_as_documented(operation, gateway)
            assert httpx.get(f"{gateway.url}/readyz").status_code == 200
    finally:
        gateway.stop()
    assert "Traceback" not in gateway.log(), gateway.log()


def _answers_as_documented(operation: APIOperation, gateway: GatewayProcess) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    def check(case: schemathesis.Case) -> None:
        # derandomize: the same requests on every run, so CI does not turn red at random (a
        # new operation or parameter changes what is generated). Generated changes may demote,
        # disable or revoke the admin the requests authenticate as; later requests then get
        # 401/403, which the document lists, so they still check the answers' shape.
        case.call_and_validate(base_url=gateway.url, headers=gateway.headers, checks=CHECKS)

    check()
