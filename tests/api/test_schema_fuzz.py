"""A schema fuzz of the live API: schemathesis generates requests from ``/openapi.json`` (valid ones and
invalid ones) for every operation and sends them with a real key. No answer may be a 5xx, every answer must
match the schema documented for its status (errors included) and its content type, and no error body may carry
internal text (addresses, secrets, SQL).

Three operations are fuzzed apart (the last test), because their effects are slow or unbounded unless cut:

* ``POST /v1/probes``: a valid probe may walk 10,000 steps of up to 60 s each, holding a worker for the rest of
  the session: there, probes are cut to 3 steps without sleep, and none crashes its worker;
* ``POST /v1/documents``: random bytes are uploads that queue ingestion jobs: there, fewer examples, as a
  tenant of its own (its limits are in ``test_limits`` and ``tests/ingest``);
* ``POST /v1/webhooks``: a valid URL registers an endpoint that every later job of its tenant is delivered to
  (retried for ``PROTOSTAR_WEBHOOKS_MAX_AGE``, short in the tests): as that tenant of its own.

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
    .exclude(method="POST", path="/v1/webhooks")
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


# The three operations left out above, fuzzed apart: as a tenant of their own (its uploads and probes touch no other
# test's data) and with their effects bounded: fewer examples, and a probe that would hold a worker (long, slow,
# or ending in a crash or transient retries) cut to a short one. Their validation is what is fuzzed here.
EFFECT_EXAMPLES = 25
effects = schemathesis.openapi.from_dict(OPENAPI).include(method="POST", path_regex="^/v1/(documents|probes|webhooks)$")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bounded(case: Case) -> None:
    """A valid probe's steps and sleep cut short (invalid values stay, to be refused); no crash nor retries."""
    body = case.body
    if case.path != "/v1/probes" or not isinstance(body, dict):
        return
    if _number(steps := body.get("steps")) and 3 < steps <= 10_000:  # type: ignore[operator]
        body["steps"] = 3
    if _number(sleep := body.get("sleep")) and 0 < sleep <= 60:  # type: ignore[operator]
        body["sleep"] = 0
    if body.get("fail") in ("crash", "transient"):
        body["fail"] = "input"


@pytest.fixture(scope="module")
def fuzz_key(live: Live) -> str:
    from tests.api.test_auth import create_key

    return create_key("schema-fuzz", admin=True)


@pytest.mark.slow
@effects.parametrize()
@hypothesis.settings(
    max_examples=EFFECT_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
    database=None,
)
def test_uploads_and_probes_answer_every_generated_request_as_documented(case: Case, live: Live, fuzz_key: str) -> None:
    _bounded(case)
    response = case.call_and_validate(
        base_url=live.api_url,
        headers={"Authorization": f"Bearer {fuzz_key}"},
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
        timeout=30,
    )
    if response.status_code >= 400:
        assert_no_internals(response.text, live.settings)
