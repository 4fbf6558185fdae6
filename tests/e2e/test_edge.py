"""The edge: nginx in front of `nixfarm up`, answering published reads without the app.

What must hold: nginx only ever gives an answer the app would give (same bytes, same
headers that matter), never for a private cache or a registry that needs a token, never
for a write; a re-upload or a changed package source withdraws what was published; what
nginx answers still shows in /metrics; and nginx dies with the farm.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from nixfarm import demo
from nixfarm.oci.manifest import DOCKER_MANIFEST, OCI_MANIFEST
from nixfarm.supervisor import descendants
from tests.fixtures.farm import NIXFARM, RunningFarm, free_port
from tests.fixtures.nixenv import NIX_COMMAND, Nix

# Only nginx's static file module sends these; answers proxied from the app lack them.
STATIC = "etag"


def _published(response: httpx.Response) -> bool:
    return STATIC in response.headers


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    """A farm with nginx in front whose registry source is a copy of the demo set, so a
    test can change the source."""
    tmp = tmp_path_factory.mktemp("edge")
    source = tmp / "pkgs"
    shutil.copytree(demo.path(), source)
    config = tmp / "nixfarm.toml"
    config.write_text(f'[nix_options]\nsubstituters = ""\n\n[edge]\nserver = "nginx"\n\n'
                      f'[registry]\nnix_timeout = 30\n[registry.source]\nkind = "path"\n'
                      f'location = "{source}"\n')
    running = RunningFarm(tmp / "data", free_port())
    running.start("--config", str(config))
    yield running
    running.stop()


def _push(farm: RunningFarm, nix: Nix, cache: str, attr: str,
          compression: str = "zstd") -> str:
    out = nix.build(attr)
    farm.cli("push", "--cache", cache, "--compression", compression, out)
    return out


def _copy(farm: RunningFarm, nix: Nix, cache: str, out: str) -> None:
    nix.run("nix", *NIX_COMMAND, "copy", "--option", "netrc-file", str(nix.netrc(farm.token)),
            "--to", f"{farm.url}/cache/{cache}", out)


def _narinfo_url(farm: RunningFarm, cache: str, out: str) -> str:
    return f"/cache/{cache}/{Path(out).name[:32]}.narinfo"


def test_public_narinfo_and_nar_are_answered_by_nginx_after_the_first_read(
        edge: RunningFarm, nix: Nix) -> None:
    cache, _ = edge.create_cache()
    out = _push(edge, nix, cache, "hello")
    url = _narinfo_url(edge, cache, out)
    first = edge.get(url, token="")
    assert first.status_code == 200 and not _published(first)
    second = edge.get(url, token="")
    assert second.status_code == 200 and _published(second)
    assert second.content == first.content
    assert second.headers["content-type"].startswith("text/x-nix-narinfo")
    head = edge.request("HEAD", url, token="")
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(first.content)

    nar = next(line.split(": ")[1] for line in first.text.splitlines()
               if line.startswith("URL: "))
    by_app = edge.get(f"/cache/{cache}/{nar}", token="")
    by_nginx = edge.get(f"/cache/{cache}/{nar}", token="")
    assert by_app.status_code == by_nginx.status_code == 200
    assert _published(by_nginx) and by_nginx.content == by_app.content
    assert by_nginx.headers["content-type"] == "application/x-nix-nar"
    part = edge.get(f"/cache/{cache}/{nar}", token="", headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == by_app.content[4:12]

    missing = edge.get(f"/cache/{cache}/{'0' * 32}.narinfo", token="")
    assert missing.status_code == 404  # a miss is the app's answer, and never published
    assert not _published(edge.get(f"/cache/{cache}/{'0' * 32}.narinfo", token=""))


def test_nix_copies_to_and_substitutes_from_a_cache_behind_nginx(
        edge: RunningFarm, nix: Nix, tmp_path: Path) -> None:
    cache, public_key = edge.create_cache()
    out = nix.build("greet")
    _copy(edge, nix, cache, out)
    for attempt in range(2):  # the second time, every narinfo and NAR comes from nginx
        store = nix.fresh_store(f"edge-{attempt}")
        nix.substitute(store, out, f"{edge.url}/cache/{cache}", public_key)
        assert (store / out.lstrip("/") / "bin" / "greet").exists()


def test_a_private_cache_is_never_published(edge: RunningFarm, nix: Nix) -> None:
    cache, _ = edge.create_cache(private=True)
    out = _push(edge, nix, cache, "hello")
    url = _narinfo_url(edge, cache, out)
    for _ in range(2):
        assert edge.get(url, token="").status_code == 404  # as a missing cache
        allowed = edge.get(url)
        assert allowed.status_code == 200 and not _published(allowed)
    assert not (edge.data_dir / "edge" / "www" / "cache" / cache).exists()
    nar = next(line.split(": ")[1] for line in allowed.text.splitlines()
               if line.startswith("URL: "))
    assert edge.get(f"/cache/{cache}/{nar}", token="").status_code == 404
    # Sent by nginx (X-Accel-Redirect) once the app checked the token: Range works.
    full = edge.get(f"/cache/{cache}/{nar}")
    part = edge.get(f"/cache/{cache}/{nar}", headers={"Range": "bytes=0-9"})
    assert full.status_code == 200 and full.headers["content-type"] == "application/x-nix-nar"
    assert part.status_code == 206 and part.content == full.content[:10]
    assert "x-accel-redirect" not in full.headers


def test_a_re_upload_withdraws_the_published_narinfo(edge: RunningFarm,
                                                      nix: Nix) -> None:
    cache, _ = edge.create_cache()
    out = _push(edge, nix, cache, "fortune")
    url = _narinfo_url(edge, cache, out)
    edge.get(url, token="")
    published = edge.get(url, token="")
    assert _published(published) and "Deriver: " in published.text
    # The same path uploaded again (as `nix copy` would), now without a deriver.
    again = "".join(line + "\n" for line in published.text.splitlines()
                    if not line.startswith(("Deriver: ", "Sig: ")))
    assert edge.request("PUT", url, content=again).status_code == 200
    now = edge.get(url, token="")
    assert now.status_code == 200 and "Deriver: " not in now.text


def test_writes_through_published_urls_reach_the_app(edge: RunningFarm,
                                                     nix: Nix) -> None:
    cache, _ = edge.create_cache()
    out = _push(edge, nix, cache, "hello")
    url = _narinfo_url(edge, cache, out)
    edge.get(url, token="")
    published = edge.get(url, token="")
    assert _published(published)
    # A PUT to a published narinfo without a token: the app refuses it, nginx never
    # answers it from the file.
    refused = edge.request("PUT", url, token="", content=published.content)
    assert refused.status_code == 401
    lying = published.text.replace("NarSize: ", "NarSize: 1")
    refused = edge.request("PUT", url, content=lying)
    assert refused.status_code == 400 and "NarSize" in refused.text
    assert edge.get(url, token="").content == published.content


def test_metrics_count_what_nginx_answers(edge: RunningFarm, nix: Nix) -> None:
    cache, _ = edge.create_cache()
    out = _push(edge, nix, cache, "hello")
    url = _narinfo_url(edge, cache, out)
    for _ in range(5):
        assert edge.get(url, token="").status_code == 200
    deadline = time.monotonic() + 5
    hits = 0.0
    while time.monotonic() < deadline:
        text = edge.get("/metrics", token="").text
        line = f'nixfarm_cache_narinfo_lookups_total{{cache="{cache}",result="hit"}}'
        hits = next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(line)),
                    0.0)
        if hits >= 5:
            break
        time.sleep(0.1)
    assert hits == 5


def _manifest(farm: RunningFarm, name: str, accept: str, method: str = "GET") -> httpx.Response:
    return farm.request(method, f"/v2/{name}/manifests/latest", token="",
                        headers={"Accept": accept})


def _until_published(get: Callable[[], httpx.Response]) -> httpx.Response:
    """A published tag is served once nginx has reloaded its map (a few milliseconds)."""
    deadline = time.monotonic() + 5
    while not _published(answer := get()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _published(answer)
    return answer


def test_registry_tags_manifests_and_blobs_come_from_nginx(edge: RunningFarm) -> None:
    both = f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"
    built = _manifest(edge, "hello/tree", both)
    assert built.status_code == 200 and not _published(built)
    again = _until_published(lambda: _manifest(edge, "hello/tree", both))
    assert again.content == built.content
    assert again.headers["docker-content-digest"] == built.headers["docker-content-digest"]
    assert again.headers["content-type"] == DOCKER_MANIFEST
    head = _manifest(edge, "hello/tree", DOCKER_MANIFEST, "HEAD")
    assert head.headers["docker-content-digest"] == built.headers["docker-content-digest"]
    assert head.headers["docker-distribution-api-version"] == "registry/2.0"
    # A client that asks for OCI alone gets OCI, from the app (nginx cannot negotiate).
    oci = _manifest(edge, "hello/tree", OCI_MANIFEST)
    assert oci.headers["content-type"] == OCI_MANIFEST and not _published(oci)

    digest = built.headers["docker-content-digest"]
    by_digest = edge.get(f"/v2/tree/hello/manifests/{digest}", token="")
    assert _published(by_digest) and by_digest.content == built.content
    assert by_digest.headers["content-type"] == DOCKER_MANIFEST
    assert "sha256:" + hashlib.sha256(by_digest.content).hexdigest() == digest
    # A name the app refuses is refused even when the digest is published.
    bad = edge.get(f"/v2/Tree/manifests/{digest}", token="")
    assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == "NAME_INVALID"

    layer = built.json()["layers"][0]["digest"]
    blob = edge.get(f"/v2/hello/blobs/{layer}", token="")
    assert _published(blob) and blob.headers["docker-content-digest"] == layer
    assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == layer


def test_a_changed_path_source_withdraws_published_tags(edge: RunningFarm,
                                                        tmp_path: Path) -> None:
    name = "motd"
    first = _manifest(edge, name, DOCKER_MANIFEST)
    _until_published(lambda: _manifest(edge, name, DOCKER_MANIFEST))
    source = Path(edge.log.parent / "pkgs")
    motd = source / "pkgs" / "motd" / "default.nix"
    motd.write_text(motd.read_text() + "\n# changed\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _published(_manifest(edge, name, DOCKER_MANIFEST)):
        time.sleep(0.2)
    after = _manifest(edge, name, DOCKER_MANIFEST)
    assert after.status_code == 200 and not _published(after)
    # The image itself is the same (a comment changed nothing Nix builds), so it may
    # be published again under the new source key.
    assert after.headers["docker-content-digest"] == first.headers["docker-content-digest"]


def test_nginx_and_the_worker_stop_with_the_farm_even_when_it_is_killed(
        tmp_path: Path) -> None:
    farm = RunningFarm(tmp_path / "data", free_port(), extra_env={"NIXFARM_EDGE__SERVER": "nginx"})
    farm.start()
    assert farm.process is not None
    pid_file = farm.data_dir / "edge" / "run" / "nginx.pid"
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    master = int(pid_file.read_text())
    # Under the supervisor, each in a process group of its own (a terminal's Ctrl-C is
    # the supervisor's alone to handle).
    group = list(descendants(farm.process.pid))
    assert master in group and len(group) >= 3  # nginx's master and worker, Granian's worker
    os.kill(farm.process.pid, signal.SIGKILL)  # the supervisor only
    farm.process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in group):
        time.sleep(0.1)
    assert not [pid for pid in group if _alive(pid)], "left running"
    with socket.socket() as s:
        # SO_REUSEADDR: connections nginx closed wait out TIME_WAIT on the port, which
        # is not a listener; a listener left behind still makes the bind fail.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", farm.port))  # the port is free again
        s.listen()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


def test_a_broken_nginx_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    done = subprocess.run(
        [NIXFARM, "up", "--data-dir", str(tmp_path / "data"),
         "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "NIXFARM_EDGE__SERVER": "nginx",
             "NIXFARM_EDGE__NGINX": "/nonexistent/nginx"})
    assert done.returncode != 0
    assert "edge.server is 'nginx' but '/nonexistent/nginx' is not installed" in done.stderr


def test_without_the_edge_the_app_answers_everything(tmp_path: Path, nix: Nix) -> None:
    farm = RunningFarm(tmp_path / "data", free_port(), extra_env={"NIXFARM_EDGE__SERVER": "none"})
    farm.start()
    try:
        cache, public_key = farm.create_cache()
        out = nix.build("hello")
        _copy(farm, nix, cache, out)
        url = _narinfo_url(farm, cache, out)
        for _ in range(2):
            answer = farm.get(url, token="")
            assert answer.status_code == 200 and answer.headers.get("server") != "nginx"
        nix.substitute(nix.fresh_store(), out, f"{farm.url}/cache/{cache}", public_key)
        assert not (farm.data_dir / "edge").exists()
    finally:
        farm.stop()


def test_uploads_refused_before_their_body_get_the_apps_answer(edge: RunningFarm) -> None:
    """A large upload refused at once (wrong token) must be a 401, not nginx's 502 for a
    connection the app closed while nginx was still streaming the body."""
    cache, _ = edge.create_cache()
    body = os.urandom(1 << 20) * 24
    url = f"/cache/{cache}/nar/{'0' * 52}.nar.xz"
    for _ in range(4):
        assert edge.request("PUT", url, token="wrong", content=body).status_code == 401
        assert edge.request("PUT", f"/cache/{cache}/nar/..%2Fx", content=b"x").status_code \
            in (400, 404)
    assert edge.get(f"/cache/{cache}/nix-cache-info", token="").status_code == 200
