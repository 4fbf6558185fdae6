"""``nixfarm ssh`` into a held sandbox is its owner's, exactly as ``nixfarm shell`` is:
another tenant's ``jobs:submit`` token is told there is no such job (a private job)
or that the job is not theirs (a public one), by the same answers as for the shell;
and a key the server cannot take as one OpenSSH public key line is refused."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from websockets.sync.client import connect

from tests.security.conftest import Tenant

FAILS = {"fail": "echo left for the owner > left.txt\nexit 1"}
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKj0k3pQyJb7r0bXyYv3ZrXc1dGZ2oRkWm0lJbJv8q9x test"


def first_answer(tenant: Tenant, job_id: int, request: dict[str, Any]) -> dict[str, Any]:
    """The server's first message to a session asked for with ``request``."""
    url = tenant.farm.url.replace("http://", "ws://", 1) + f"/api/v1/jobs/{job_id}/shell"
    with connect(url, additional_headers={"Authorization": f"Bearer {tenant.token}"},
                 open_timeout=30) as ws:
        ws.send(json.dumps(request))
        answer = json.loads(ws.recv(timeout=90))
    assert isinstance(answer, dict), answer
    return answer


def cli(tenant: Tenant, *args: str) -> subprocess.CompletedProcess[str]:
    return tenant.farm.cli(*args, token=tenant.token, check=False)


def test_only_the_owner_opens_an_ssh_session(alice: Tenant, mallory: Tenant) -> None:
    private = alice.wait(alice.submit(FAILS))
    public = alice.wait(alice.submit(FAILS, visibility="public"))
    for job in (private, public):
        assert job["status"] == "failed" and job["held_until"] is not None, job
    shell = {"command": ["true"], "rows": 24, "cols": 80}
    ssh = {"command": None, "rows": 24, "cols": 80, "public_key": KEY}
    for job, kind in ((private, "NotFound"), (public, "Forbidden")):
        as_shell = first_answer(mallory, job["id"], shell)
        as_ssh = first_answer(mallory, job["id"], ssh)
        assert as_shell["kind"] == as_ssh["kind"] == kind, (as_shell, as_ssh)
        assert as_ssh["error"] == as_shell["error"]
        # Through the CLI too: refused before ssh is even asked to connect.
        refused = cli(mallory, "ssh", str(job["id"]), "--", "cat", "left.txt")
        assert refused.returncode != 0 and "left for the owner" not in refused.stdout
        assert as_ssh["error"] in refused.stderr, refused.stderr
    assert "no job" in first_answer(mallory, private["id"], ssh)["error"]

    # A key is one public key line, no options (no command="...", no second line).
    for bad in (f'command="sh" {KEY}', f"{KEY}\n{KEY}", "ssh-ed25519", "not a key"):
        answer = first_answer(alice, private["id"], {**ssh, "public_key": bad})
        assert answer["kind"] == "InvalidInput" and "public key" in answer["error"], answer

    # The owner gets through to the runner, whose bwrap sandbox has no sshd: one
    # sentence saying so and naming nixfarm shell, exit 2 (what to use instead).
    owner = cli(alice, "ssh", str(private["id"]), "--", "cat", "left.txt")
    assert owner.returncode == 2, (owner.stdout, owner.stderr)
    assert "bwrap sandbox, which has no SSH server" in owner.stderr, owner.stderr
    assert f"nixfarm shell {private['id']}" in owner.stderr, owner.stderr
    # ...and nixfarm shell does work there.
    shell_done = cli(alice, "shell", str(private["id"]), "--", "cat", "left.txt")
    assert shell_done.returncode == 0 and "left for the owner" in shell_done.stdout
