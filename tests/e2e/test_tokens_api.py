"""Tokens over a real farm: no token dead at birth, and never a farm without an admin."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from tests.fixtures.farm import RunningFarm


def test_expiry_in_the_past_is_refused(farm: RunningFarm) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    refused = farm.request(
        "POST", "/api/v1/tokens", json={"name": "late", "scopes": ["runner"], "expires_at": past}
    )
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["field"] == "expires_at"
    assert "is in the past; a token must expire in the future" in error["message"]
    assert error["message"].count(". ") == 0 and "\n" not in error["message"]
    assert not [t for t in farm.get("/api/v1/tokens").json() if t["name"] == "late"]

    # A time without a zone is UTC (it used to be a 500); in the future it is accepted.
    future = (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None, microsecond=0)
    created = farm.request(
        "POST",
        "/api/v1/tokens",
        json={"name": "tomorrow", "scopes": ["runner"], "expires_at": future.isoformat()},
    )
    assert created.status_code == 201, created.text
    expires = datetime.fromisoformat(created.json()["expires_at"])
    assert expires == future.replace(tzinfo=UTC)


def test_the_last_admin_token_cannot_be_revoked(farm: RunningFarm) -> None:
    mine = farm.get("/api/v1/whoami").json()["name"]
    admins = [t for t in farm.get("/api/v1/tokens").json() if "admin" in t["scopes"]]
    [own] = [t for t in admins if t["name"] == mine]
    # Every other admin token goes; revoking them is allowed while one remains.
    second = farm.request(
        "POST", "/api/v1/tokens", json={"name": "second admin", "scopes": ["admin"]}
    ).json()
    for other in [*[t for t in admins if t["id"] != own["id"]], second]:
        r = farm.request("DELETE", f"/api/v1/tokens/{other['id']}")
        assert r.status_code == 200, r.text

    refused = farm.request("DELETE", f"/api/v1/tokens/{own['id']}")
    assert refused.status_code == 409, refused.text
    assert "is the last admin token" in refused.json()["error"]["message"]
    assert "create another admin token first" in refused.json()["error"]["message"]
    cli = farm.cli("token", "revoke", str(own["id"]), check=False)
    assert cli.returncode != 0 and "last admin token" in cli.stderr
    assert farm.get("/api/v1/whoami").json()["scopes"] == ["admin"]

    # With another admin in place, the first may go; the second is then the last.
    third = farm.request(
        "POST", "/api/v1/tokens", json={"name": "third admin", "scopes": ["admin"]}
    ).json()
    assert farm.request("DELETE", f"/api/v1/tokens/{third['id']}").status_code == 200
    # An admin token that has expired does not count as one that keeps the farm open.
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    lapsing = farm.request(
        "POST",
        "/api/v1/tokens",
        json={"name": "lapsing admin", "scopes": ["admin"], "expires_at": soon},
    ).json()
    time.sleep(2.5)
    assert farm.request("DELETE", f"/api/v1/tokens/{own['id']}").status_code == 409
    # Revoking the lapsed one is fine: it is not what keeps the farm open.
    assert farm.request("DELETE", f"/api/v1/tokens/{lapsing['id']}").status_code == 200


def test_cli_expiry_reads_durations(farm: RunningFarm) -> None:
    secret = farm.cli(
        "token", "create", "--scope", "runner", "--name", "week", "--expires-in", "2w"
    ).stdout.strip()
    [week] = [t for t in farm.get("/api/v1/tokens").json() if t["name"] == "week"]
    left = datetime.fromisoformat(week["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=13, hours=23) < left <= timedelta(weeks=2)
    assert farm.get("/api/v1/whoami", token=secret).json()["name"] == "week"
    ambiguous = farm.cli("token", "create", "--scope", "runner", "--expires-in", "1m", check=False)
    assert ambiguous.returncode == 2 and "write 1min for minutes" in ambiguous.stderr
