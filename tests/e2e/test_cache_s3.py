"""A farm whose object store is S3: downloads are redirects to presigned URLs."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.farm import RunningFarm, free_port
from tests.fixtures.nixenv import NIX_COMMAND, Nix
from tests.fixtures.s3 import S3Server


@pytest.fixture
def s3_farm(tmp_path: Path, s3_server: S3Server, s3_bucket: str) -> Iterator[RunningFarm]:
    running = RunningFarm(tmp_path / "data", free_port(), extra_env={
        "NIXFARM_STORAGE__KIND": "s3",
        "NIXFARM_STORAGE__BUCKET": s3_bucket,
        "NIXFARM_STORAGE__ENDPOINT": s3_server.endpoint,
        "NIXFARM_STORAGE__REGION": s3_server.region,
        "NIXFARM_STORAGE__ACCESS_KEY_ID": s3_server.access_key_id,
        "NIXFARM_STORAGE__SECRET_ACCESS_KEY": s3_server.secret_access_key,
        "NIXFARM_STORAGE__PREFIX": "farm",
    })
    running.start()
    yield running
    running.stop(signal.SIGTERM)


def test_s3_store_push_copy_substitute_and_presigned_redirects(
        s3_farm: RunningFarm, s3_server: S3Server, s3_bucket: str, nix: Nix) -> None:
    farm = s3_farm
    cache, key = farm.create_cache()
    motd = nix.build("motd")
    farm.cli("push", "--cache", cache, motd)
    hello = nix.build("hello")
    nix.run("nix", *NIX_COMMAND, "copy", "--option", "netrc-file", str(nix.netrc(farm.token)),
            "--to", f"{farm.url}/cache/{cache}", hello)

    info = farm.get(f"/cache/{cache}/{Path(motd).name[:32]}.narinfo").text
    url = next(line.split(": ", 1)[1] for line in info.splitlines() if line.startswith("URL:"))
    r = farm.get(f"/cache/{cache}/{url}")
    assert r.status_code == 307
    location = r.headers["location"]
    assert location.startswith(f"{s3_server.endpoint}/{s3_bucket}/farm/{url}")
    assert "X-Amz-Signature=" in location
    size = int(next(line.split(": ")[1] for line in info.splitlines()
                    if line.startswith("FileSize:")))
    assert len(httpx.get(location).content) == size
    # HEAD is answered by the server itself: a presigned URL is signed for GET only.
    head = farm.request("HEAD", f"/cache/{cache}/{url}")
    assert head.status_code == 200 and int(head.headers["content-length"]) == size
    # Nothing is kept on local disk but the database.
    assert not (farm.data_dir / "store").exists()

    for path in (motd, hello):
        store = nix.fresh_store(Path(path).name)
        nix.substitute(store, path, f"{farm.url}/cache/{cache}", key)
        assert (store / path.lstrip("/")).is_dir()
