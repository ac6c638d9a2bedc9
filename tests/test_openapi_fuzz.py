"""Schema-driven fuzzing: schemathesis generates requests for each operation of /openapi.json,
valid ones and invalid ones, against a live server with an admin token. No response may be a
5xx, and every response must match the document (status codes, content types, schemas).

Every check runs except "positive data acceptance", which expects any request the schema
allows to succeed: the API refuses on purpose what JSON Schema cannot express (an integer
sent as 35.0, a created_after later than created_before).

(Driven through schemathesis' Python API and Hypothesis directly: its pytest plugin does not
work with the pytest this project uses.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.main import ROUTES
from app.openapi import build_openapi
from tests.web_fixtures import *  # noqa: F403
from tests.web_fixtures import ApiUser, LiveServer

EXAMPLES_PER_OPERATION = 25

# Event streams are left out: they stay open by design (tests/test_sse.py covers them).
OPERATIONS = [(method.upper(), path) for path, methods in build_openapi(ROUTES)["paths"].items()
              for method, operation in methods.items()
              if "text/event-stream" not in operation["responses"].get("200", {}).get("content", {})]


def _seed(server: LiveServer, user: ApiUser) -> None:
    """A few real jobs, so generated ids sometimes name one."""
    with server.sync_client(user) as http:
        for kind, payload in [("email", {"to": "a@example.com", "subject": "s"}), ("external", {"data": 1}),
                              ("report", {"name": "r"})]:
            assert http.post("/jobs", json={"kind": kind, "payload": payload}).status_code == 201


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_server_errors_and_responses_match_the_schema(start_server: Callable[..., LiveServer], admin: ApiUser,
                                                         method: str, path: str, mode: GenerationMode) -> None:
    server = start_server()
    _seed(server, admin)
    operation = schemathesis.openapi.from_url(server.url("/openapi.json"))[path][method]
    if mode == GenerationMode.NEGATIVE and not (operation.body or operation.query or operation.path_parameters):
        pytest.skip("nothing to make invalid")

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        response = case.call(headers=admin.headers, timeout=30)
        assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
        case.validate_response(response, headers=admin.headers, excluded_checks=[positive_data_acceptance])

    check()
