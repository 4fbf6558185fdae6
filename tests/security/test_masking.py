"""Masking holds for a secret printed across the runner's 64 KiB line cut (issue 12,
point 6), wherever the cut falls in it."""

from __future__ import annotations

import uuid

from nixfarm.runner.sandbox.processes import MAX_LINE
from tests.security.conftest import Tenant


def test_a_secret_split_by_the_line_cut_is_masked(alice: Tenant) -> None:
    value = f"AS3cr3tV4lue-{uuid.uuid4().hex}"
    secret = alice.secret(value)
    # The cut falls 1, 7 and len-1 bytes into the value; and once on a line of its own.
    cuts = [1, 7, len(value) - 1]
    script = "set +x\n" + "".join(
        f"head -c {MAX_LINE - at} /dev/zero | tr '\\0' x; cat ~/secret; sleep 0.3; echo\n"
        for at in cuts)
    script += "cat ~/secret; echo\n"
    job = alice.wait(alice.submit({"print": script}, f"secrets: [{secret}]\n"))
    log = alice.logs(job)
    assert job["status"] == "success", log[-2000:]
    lines = log.splitlines()
    cut = [i for i, line in enumerate(lines) if line.startswith("x" * 1000)]
    assert len(cut) == len(cuts), log[-2000:]
    for index in cut:
        # The line's own text stays, the value goes whole, wherever it was cut.
        assert set(lines[index]) == {"x"}, lines[index][-100:]
        assert lines[index + 1] == "********", lines[index + 1]
        assert len(lines[index]) == MAX_LINE - cuts[cut.index(index)]
    assert value not in log
    assert log.count("********") == len(cuts) + 1
