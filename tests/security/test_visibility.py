"""No one reads a job they were not given (issue 12, point 5): jobs are private by
default; an unlisted job is reached by its key, never by its sequential id alone."""

from __future__ import annotations

from typing import Any

from tests.security.conftest import Tenant, anonymous

ARTIFACT = "artifacts:\n  - secret-copy.txt\n"


def job_paths(job: dict[str, Any]) -> list[str]:
    base = f"/api/v1/jobs/{job['id']}"
    return [base, f"{base}/manifest", f"{base}/log", f"{base}/tasks/copy/log",
            f"{base}/artifacts/secret-copy.txt", f"/jobs/{job['id']}"]


def test_a_job_is_private_unless_its_owner_says_otherwise(alice: Tenant,
                                                          mallory: Tenant) -> None:
    secret = alice.secret("alice-artifact-secret-0123456789")
    job = alice.wait(alice.submit({"copy": "cp ~/secret secret-copy.txt"},
                                  ARTIFACT + f"secrets: [{secret}]\n"))
    assert job["status"] == "success", alice.logs(job)
    assert job["visibility"] == "private" and job["key"] is None
    farm = alice.farm
    for path in job_paths(job):
        assert anonymous(farm, path).status_code == 404, path
        assert farm.get(path, mallory.token).status_code == 404, path
    # Guessing a key does not help either.
    assert anonymous(farm, job_paths(job)[4], key="A" * 22).status_code == 404
    r = farm.get(job_paths(job)[4], alice.token)
    assert r.status_code == 200 and r.text.startswith("alice-artifact-secret")
    # Not in anyone else's listing.
    listed = farm.get("/api/v1/jobs", mallory.token).json()["jobs"]
    assert job["id"] not in [j["id"] for j in listed]
    assert job["id"] not in [j["id"] for j in anonymous(farm, "/api/v1/jobs").json()["jobs"]]


def test_an_unlisted_job_is_read_by_its_key_never_by_its_id(alice: Tenant,
                                                             mallory: Tenant) -> None:
    farm = alice.farm
    job = alice.wait(alice.submit({"copy": "echo shared > secret-copy.txt"}, ARTIFACT,
                                  visibility="unlisted"))
    assert job["status"] == "success", alice.logs(job)
    key = job["key"]
    assert isinstance(key, str) and len(key) >= 22
    assert job["url"].endswith(f"?key={key}")
    for path in job_paths(job):
        assert anonymous(farm, path).status_code == 404, path
        assert farm.get(path, mallory.token).status_code == 404, path
        assert anonymous(farm, path, key=key[:-1] + ("A" if key[-1] != "A" else "B")
                         ).status_code == 404, path
        assert anonymous(farm, path, key=key).status_code == 200, path
    # The URLs the API gives out are the capability: they work as they are.
    (artifact,) = job["artifacts"]
    assert anonymous(farm, artifact["url"].removeprefix(farm.url)).text == "shared\n"
    log_url = job["tasks"][0]["log_url"].removeprefix(farm.url)
    assert "echo shared" in anonymous(farm, log_url).text
    # Another job's key opens nothing else.
    other = alice.submit({"t": "true"}, visibility="unlisted", execute=False)
    assert anonymous(farm, f"/api/v1/jobs/{other['id']}", key=key).status_code == 404


def test_a_public_job_is_read_by_anyone(alice: Tenant) -> None:
    job = alice.submit({"t": "true"}, visibility="public", execute=False)
    assert anonymous(alice.farm, f"/api/v1/jobs/{job['id']}").status_code == 200
