"""The admin API against its own OpenAPI document, with requests generated from it by
schemathesis: whatever a request holds, the gateway answers without a server error, with a
status and a body the document lists for that operation, and goes on serving."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import GatewayProcess, MockProvider, standard_config

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzzed_gateway(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = GatewayProcess(standard_config(mock_provider.url), tmp_path_factory.mktemp("fuzz"))
    yield process
    process.stop()
    assert "Traceback" not in process.log(), process.log()


def test_every_admin_operation_answers_as_documented(fuzzed_gateway: GatewayProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed_gateway.url}/admin/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def answers_as_documented(case: schemathesis.Case) -> None:
            # Generated changes may demote, disable or revoke the admin the requests
            # authenticate as; later requests then get 401/403, which the document lists, so
            # they still check the answers' shape.
            case.call_and_validate(
                base_url=fuzzed_gateway.url, headers=fuzzed_gateway.headers, checks=CHECKS
            )

        answers_as_documented()
        assert httpx.get(f"{fuzzed_gateway.url}/readyz").status_code == 200
