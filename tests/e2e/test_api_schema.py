"""The JSON API against its own OpenAPI document, fuzzed by schemathesis.

A real farm (``nixfarm up``, nginx in front) is asked what hypothesis makes of every
operation the document lists, with the admin token so that the requests get past
authentication into the services. Every answer must be documented (status and body
schema) and none may be a 5xx. The run is bounded (``_EXAMPLES`` per operation) so it
takes well under a minute or two on two cores.

Left out of the fuzzing, each for a reason: the live event streams (``.../events``),
which follow a job until it ends and so never answer whole; and revoking tokens, which
would revoke the admin token the run uses (its ids are tried with ids beyond the
database's in ``test_ids_beyond_the_database_are_bad_input``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from tests.fixtures.farm import RunningFarm, running_farm

#: Examples per operation; FUZZ_EXAMPLES=200 for a deeper run by hand.
_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "6"))
#: No example database, no explaining: the run is the same each time, and short.
_PHASES = [Phase.explicit, Phase.generate, Phase.shrink]
#: Long-polls (claim, heartbeat) are held no longer than this, so the run stays short.
_MAX_WAIT = 0.5


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api_farm(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    """On PostgreSQL too: it refuses what SQLite takes (a NUL in text, a number past its
    integer). No embedded runner: a job the fuzzer manages to submit stays queued."""
    with running_farm(request.param, request, tmp_path_factory.mktemp("fuzz") / "data",
                      {"NIXFARM_JOBS__EMBEDDED_RUNNER_SLOTS": "0"}) as running:
        yield running


def _fuzz(operation: APIOperation[Any, Any, Any, Any], farm: RunningFarm) -> str | None:
    """Up to ``_EXAMPLES`` valid and invalid requests for ``operation``; the first
    answer that is a 5xx or not as documented (shrunk by hypothesis), or None."""
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                      operation.as_strategy(GenerationMode.NEGATIVE))

    @given(cases)
    @settings(max_examples=_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=_PHASES)
    def ask(case: schemathesis.Case[Any]) -> None:
        # nginx answers a request line past its buffer (8 KiB) with a 414 of its own,
        # before the API sees it: that is the edge's limit, not the API's answer.
        assume(len(quote(case.formatted_path)) + len(urlencode(case.query or {})) < 4000)
        if isinstance(case.body, dict) and "wait" in case.body:
            wait = case.body["wait"]
            case.body["wait"] = min(wait, _MAX_WAIT) if isinstance(wait, float | int) else wait
        response = case.call(base_url=farm.url, timeout=30,
                             headers={"Authorization": f"Bearer {farm.token}"})
        assert response.status_code < 500, \
            f"{response.status_code} {response.text[:300]}\n{case.as_curl_command()}"
        case.validate_response(response, checks=[status_code_conformance,
                                                 response_schema_conformance])

    try:
        ask()
    except Exception as e:  # hypothesis raised the shrunk example's failure
        return f"{operation.label}: {type(e).__name__}: {str(e)[:1500]}"
    return None


def test_answers_match_the_document(api_farm: RunningFarm) -> None:
    schema = schemathesis.openapi.from_url(f"{api_farm.url}/api/v1/openapi.json")
    fuzzed = schema.exclude(path_regex=r"/events$").exclude(
        method="DELETE", path_regex=r"^/api/v1/tokens/")
    operations = [result.ok() for result in fuzzed.get_all_operations()
                  if isinstance(result, Ok)]
    assert len(operations) > 25  # the document lists the API, not a part of it
    failures = [f for f in (_fuzz(op, api_farm) for op in operations) if f]
    assert not failures, "\n\n".join(failures)


_PATHS = [
    ("GET", "/api/v1/jobs/{}"),
    ("GET", "/api/v1/jobs/{}/log"),
    ("GET", "/api/v1/jobs/{}/events"),
    ("GET", "/api/v1/jobs?before={}"),
    ("POST", "/api/v1/jobs/{}/cancel"),
    ("GET", "/api/v1/job-groups/{}"),
    ("DELETE", "/api/v1/tokens/{}"),
    ("POST", "/api/v1/runners/{}/jobs/1/heartbeat"),
    ("POST", "/api/v1/runners/1/jobs/{}/finish"),
]


@pytest.mark.parametrize(("method", "path"), _PATHS)
def test_ids_beyond_the_database_are_bad_input(api_farm: RunningFarm, method: str,
                                               path: str) -> None:
    """Ids past what the database holds (PostgreSQL's integer; past int64 too) are
    refused, naming the parameter, not a 500."""
    for beyond in (2**31, 2**63):
        answer = api_farm.request(method, path.format(beyond), json={})
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["type"] == "InvalidInput"
        assert error["field"] in {"job_id", "group_id", "token_id", "runner_id", "before"}
        assert error["field"] in error["message"]


def test_job_page_beyond_the_database(api_farm: RunningFarm) -> None:
    answer = api_farm.get(f"/jobs/{2**63}")
    assert answer.status_code == 400
    assert "job_id" in answer.text


def test_claim_for_another_runners_id(api_farm: RunningFarm) -> None:
    """A runner claiming for a runner another token registered: 403, not a 500."""
    with api_farm.client() as admin:
        first = admin.post("/api/v1/tokens", json={"name": "r1", "scopes": ["runner"]})
        second = admin.post("/api/v1/tokens", json={"name": "r2", "scopes": ["runner"]})
    one, two = first.json()["secret"], second.json()["secret"]
    registered = api_farm.request("POST", "/api/v1/runners", token=one,
                                  json={"name": "one", "images": ["nix"]})
    assert registered.status_code == 201, registered.text
    theirs = registered.json()["id"]
    claim = api_farm.request("POST", f"/api/v1/runners/{theirs}/claim", token=two,
                             json={"wait": 0})
    assert claim.status_code == 403, claim.text
    assert claim.json()["error"]["type"] == "Forbidden"
    nobody = api_farm.request("POST", f"/api/v1/runners/{theirs + 1000}/claim", token=two,
                              json={"wait": 0})
    assert nobody.status_code == 404, nobody.text


def test_validation_errors_are_the_apis_shape(api_farm: RunningFarm) -> None:
    """FastAPI's 422 ``{"detail": ...}`` never escapes: a 400 naming the field."""
    answer = api_farm.get("/api/v1/jobs?limit=0")
    assert answer.status_code == 400
    assert answer.json() == {"error": {
        "type": "InvalidInput", "field": "limit",
        "message": "query parameter 'limit': input should be greater than or equal to 1"}}
    body = api_farm.request("POST", "/api/v1/caches", content=b"{not json",
                            headers={"Content-Type": "application/json"})
    assert body.status_code == 400 and body.json()["error"]["field"] == "body"
    missing = api_farm.request("POST", "/api/v1/caches", json={"private": True})
    assert missing.json()["error"] == {"type": "InvalidInput", "field": "name",
                                       "message": "field 'name': field required"}
    assert "detail" not in httpx.get(f"{api_farm.url}/api/v1/nowhere").json()


def test_openapi_documents_the_error_answers(api_farm: RunningFarm) -> None:
    document = api_farm.get("/api/v1/openapi.json", token="").json()
    operation = document["paths"]["/api/v1/jobs/{job_id}"]["get"]
    assert {"400", "401", "403", "404", "409"} <= set(operation["responses"])
    assert "422" not in operation["responses"]
    error = operation["responses"]["404"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorOut"}


@pytest.mark.parametrize(("args", "names"), [
    (("jobs", "--limit", "0"), "limit"),
    (("jobs", "--status", "nonsense"), "status"),
])
def test_the_cli_says_bad_input_in_one_sentence(api_farm: RunningFarm, args: tuple[str, ...],
                                                 names: str) -> None:
    """What the API refuses as bad input, the CLI reports as bad input: exit 2."""
    done = api_farm.cli(*args, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0] and "detail" not in lines[0]


def test_the_api_docs_need_nothing_from_outside(api_farm: RunningFarm) -> None:
    """/api/docs names only the farm's own URLs (Swagger UI from the package), and each
    of them answers: the page works on a machine without a CDN."""
    page = api_farm.get("/api/docs", token="")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    urls = re.findall(r"""(?:src|href)="([^"]+)"|url: '([^']+)'""", page.text)
    named = [a or b for a, b in urls]
    assert len(named) >= 4, named  # the script, the stylesheet, the icon, the document
    for url in named:
        assert url.startswith("/") and not url.startswith("//"), url
        answer = api_farm.get(url, token="")
        assert answer.status_code == 200, url
        assert len(answer.content) > 1000, url
    assert "/api/v1/openapi.json" in named
