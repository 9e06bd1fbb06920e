"""A schema fuzz of the live API: schemathesis generates requests from ``/openapi.json`` (valid ones and
invalid ones) for every operation and sends them with a real key. No answer may be a 5xx, every answer must
match the schema documented for its status (errors included) and its content type, and no error body may carry
internal text (addresses, secrets, SQL).

Left out, because their effects are slow or unbounded, not because they are trusted:

* ``POST /v1/probes``: a valid probe may walk 10,000 steps of up to 60 s each, holding a worker for the rest of
  the session (its validation is covered by ``test_auth``);
* ``POST /v1/documents``: random bytes are uploads that queue ingestion jobs (its limits are in
  ``test_limits`` and ``tests/ingest``).

Each operation gets a bounded number of examples, so the fuzz adds well under a minute to the suite. The schema is
the application's own (built without starting it, so that every operation is a test of its own); the first test
checks that it is what the live API serves at ``/openapi.json``.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from protostar.api.app import create_app
from protostar.settings import Settings
from tests.api.leaks import assert_no_internals
from tests.conftest import Live

EXAMPLES = 50


OPENAPI = create_app(Settings()).openapi()

schema = (
    schemathesis.openapi.from_dict(OPENAPI)
    .exclude(method="POST", path="/v1/probes")
    .exclude(method="POST", path="/v1/documents")
)


def test_the_fuzzed_schema_is_the_served_one(live: Live) -> None:
    with live.client("") as client:
        assert client.get("/openapi.json").json() == OPENAPI


@pytest.mark.slow
@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure here is reproducible
    suppress_health_check=list(hypothesis.HealthCheck),
    database=None,
)
def test_the_api_answers_every_generated_request_as_documented(case: Case, live: Live) -> None:
    response = case.call_and_validate(
        base_url=live.api_url,
        headers={"Authorization": f"Bearer {live.admin_key}"},
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
        timeout=30,
    )
    if response.status_code >= 400:
        assert_no_internals(response.text, live.settings)
