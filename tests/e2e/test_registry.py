"""The registry end to end: a real `nixfarm up --demo`, skopeo, podman, bubblewrap."""

from __future__ import annotations

import json
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from nixfarm.farmkeys import DEFAULT_FILES, REGISTRY_TOKEN
from nixfarm.oci.manifest import DOCKER_MANIFEST, OCI_MANIFEST
from nixfarm.registry.pulltokens import mint
from tests.fixtures.farm import NIXFARM, RunningFarm, free_port

TIMEOUT = 5  # seconds: the registry's Nix time limit in these farms
PODMAN_LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def _start(tmp: Path, extra: str = "") -> RunningFarm:
    config = tmp / "nixfarm.toml"
    config.write_text(f'[nix_options]\nsubstituters = ""\n\n[registry]\n'
                      f"nix_timeout = {TIMEOUT}\n{extra}")
    running = RunningFarm(tmp / "data", free_port())
    running.start("--demo", "--config", str(config))
    return running


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    running = _start(tmp_path_factory.mktemp("registry"))
    yield running
    running.stop()


def _ref(farm: RunningFarm, name: str) -> str:
    return f"docker://127.0.0.1:{farm.port}/{name}:latest"


def _skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed:\n{done.stderr}")
    return done


def _manifest(farm: RunningFarm, name: str, accept: str = DOCKER_MANIFEST,
              method: str = "GET") -> httpx.Response:
    return farm.request(method, f"/v2/{name}/manifests/latest", token="",
                        headers={"Accept": accept})


def _unpack(oci_dir: Path, root: Path) -> None:
    """Unpack an OCI layout's image layers in order, as a container runtime would."""
    index = json.loads((oci_dir / "index.json").read_text())
    blobs = oci_dir / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    root.mkdir()
    for layer in manifest["layers"]:
        with tarfile.open(blobs / layer["digest"][7:], "r:gz") as tar:
            # Debian 12's Python (3.11.2) predates extraction filters.
            if hasattr(tarfile, "tar_filter"):
                tar.extractall(root, filter="tar")
            else:
                tar.extractall(root)


def test_skopeo_copies_an_image_that_runs_under_bubblewrap(
        registry: RunningFarm, tmp_path: Path) -> None:
    inspected = json.loads(_skopeo("inspect", "--tls-verify=false",
                                   _ref(registry, "hello/busybox")).stdout)
    assert inspected["Architecture"] == "amd64"
    assert "PATH=/bin:/sbin:/usr/bin" in inspected["Env"]

    oci = tmp_path / "oci"
    _skopeo("copy", "--src-tls-verify=false", _ref(registry, "busybox/hello"), f"oci:{oci}")
    root = tmp_path / "root"
    _unpack(oci, root)
    assert (root / "etc" / "passwd").read_text().startswith("root:x:0:0:")
    done = subprocess.run(
        ["bwrap", "--bind", str(root), "/", "--proc", "/proc", "--dev", "/dev",
         "--unshare-all", "--die-with-parent", "/bin/hello"],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello, world!\n"


def test_podman_pulls_and_runs_an_image(registry: RunningFarm, tmp_path: Path) -> None:
    runroot = Path(f"/tmp/nfp-{uuid.uuid4().hex[:8]}")  # sockets need a short path
    podman = ["podman", "--root", str(tmp_path / "podman"), "--runroot", str(runroot),
              "--storage-driver", "vfs", "--runtime", "runc"]
    image = f"127.0.0.1:{registry.port}/cowsay/hello"
    try:
        pulled = subprocess.run([*podman, "pull", "--tls-verify=false", image],
                                capture_output=True, text=True, timeout=120)
        assert pulled.returncode == 0, pulled.stderr
        for command, expected in ((["hello"], "Hello, world!\n"),
                                  (["cowsay", "moo"], "moo")):
            ran = subprocess.run([*podman, "run", "--rm", *PODMAN_LIMITS, image, *command],
                                 capture_output=True, text=True, timeout=60)
            assert ran.returncode == 0, ran.stderr
            assert expected in ran.stdout
    finally:
        subprocess.run([*podman, "system", "reset", "--force"], capture_output=True, timeout=60)
        subprocess.run(["rm", "-rf", str(runroot)], check=False)


def test_pull_api_headers_negotiation_digests_and_ranges(registry: RunningFarm) -> None:
    base = registry.get("/v2/", token="")
    assert base.status_code == 200
    assert base.headers["docker-distribution-api-version"] == "registry/2.0"
    tags = registry.get("/v2/hello/tags/list", token="").json()
    assert tags == {"name": "hello", "tags": ["latest"]}

    docker = _manifest(registry, "hello/busybox")
    assert docker.headers["content-type"] == DOCKER_MANIFEST
    assert docker.headers["docker-content-digest"] == _manifest(
        registry, "busybox/hello").headers["docker-content-digest"]
    head = _manifest(registry, "hello/busybox", method="HEAD")
    assert head.content == b""
    assert head.headers["content-length"] == str(len(docker.content))
    assert head.headers["docker-content-digest"] == docker.headers["docker-content-digest"]
    oci = _manifest(registry, "hello/busybox", accept=f"{OCI_MANIFEST}, */*;q=0.1")
    assert oci.headers["content-type"] == OCI_MANIFEST

    digest = docker.headers["docker-content-digest"]
    by_digest = registry.get(f"/v2/hello/busybox/manifests/{digest}", token="")
    assert by_digest.content == docker.content
    assert by_digest.headers["content-type"] == DOCKER_MANIFEST

    layer = docker.json()["layers"][0]
    url = f"/v2/hello/busybox/blobs/{layer['digest']}"
    blob = registry.get(url, token="")
    assert len(blob.content) == layer["size"]
    assert blob.headers["docker-content-digest"] == layer["digest"]
    part = registry.get(url, token="", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == blob.content[10:20]
    assert registry.request("HEAD", url, token="").headers["content-length"] == str(layer["size"])


def test_adding_a_package_reuses_the_layers_both_images_share(registry: RunningFarm) -> None:
    small = [layer["digest"] for layer in _manifest(registry, "busybox/tree").json()["layers"]]
    big = [layer["digest"] for layer in
           _manifest(registry, "busybox/tree/greet").json()["layers"]]
    assert set(small[:-1]) <= set(big)  # all but the customisation layer
    assert small[-1] != big[-1]


def test_ten_concurrent_pulls_cause_one_build(registry: RunningFarm) -> None:
    def pull(_: int) -> str:
        response = _manifest(registry, "fortune/banner")
        assert response.status_code == 200, response.text
        return response.headers["docker-content-digest"]

    with ThreadPoolExecutor(10) as pool:
        digests = set(pool.map(pull, range(10)))
    assert len(digests) == 1
    builds = registry.get("/registry/builds").json()["builds"]
    assert [b["state"] for b in builds if b["image"].startswith("banner/fortune ")] == [
        "succeeded"]


@pytest.mark.parametrize("name", [
    "%2E%2E/x", "a%3Bb", "Hello", "a" * 300, "%24%7Bbuiltins.abort%20%22x%22%7D",
    "hello%22%2B(import%20%2Fetc)",
])
def test_bad_names_are_name_invalid(registry: RunningFarm, name: str) -> None:
    response = _manifest(registry, name)
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["code"] == "NAME_INVALID" and "name" in error["message"]


def test_unknown_broken_and_slow_packages_are_clear_errors(registry: RunningFarm) -> None:
    unknown = _manifest(registry, "hello/nosuchpkg/alsomissing")
    assert unknown.status_code == 404
    [error] = unknown.json()["errors"]
    assert error["code"] == "MANIFEST_UNKNOWN"
    assert "'nosuchpkg'" in error["message"] and "'alsomissing'" in error["message"]
    refused = _skopeo("inspect", "--tls-verify=false", _ref(registry, "nosuchpkg"), check=False)
    assert refused.returncode != 0 and "nosuchpkg" in refused.stderr

    broken = _manifest(registry, "broken")
    assert broken.status_code == 502
    [error] = broken.json()["errors"]
    assert error["code"] == "BUILD_FAILED" and "broken-1.0.drv" in error["message"]
    assert any("always fails to build" in line for line in error["detail"]["log_tail"])

    # While `slow` builds, its log streams live from the build board.
    answer: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: answer.update(r=_manifest(registry, "slow")))
    started = time.monotonic()
    slow.start()
    build_id = ""
    while not build_id and time.monotonic() - started < TIMEOUT:
        running = [b for b in registry.get("/registry/builds").json()["builds"]
                   if b["image"].startswith("slow ") and b["state"] == "running"]
        build_id = running[0]["id"] if running else ""
        time.sleep(0.05)
    assert build_id
    with httpx.stream("GET", f"{registry.url}/registry/builds/{build_id}/log",
                      timeout=30) as log:
        for line in log.iter_lines():
            if "sleeping forever" in line:
                assert slow.is_alive()  # the line arrived while the build still ran
                break
    slow.join(60)
    response = answer["r"]
    assert response.status_code == 504
    assert time.monotonic() - started < TIMEOUT + 10
    [error] = response.json()["errors"]
    assert error["code"] == "BUILD_TIMEOUT"
    assert f"{TIMEOUT} seconds" in error["message"] and build_id in error["message"]
    page = registry.get(f"/registry/builds/{build_id}")
    assert page.status_code == 200 and "slow" in page.text

    # ...and the server goes on serving.
    assert _manifest(registry, "hello").status_code == 200


def test_pull_auth_follows_the_bearer_token_flow(tmp_path: Path) -> None:
    private = _start(tmp_path, "require_auth = true\ntoken_seconds = 120\n")
    try:
        challenge = private.get("/v2/", token="")
        assert challenge.status_code == 401
        assert challenge.json()["errors"][0]["code"] == "UNAUTHORIZED"
        assert challenge.headers["www-authenticate"].startswith(
            f'Bearer realm="{private.url}/registry/token"')
        # The realm is the configured URL whatever Host the request names: a forged Host
        # must not send clients (and their credentials) elsewhere.
        forged = private.get("/v2/hello/manifests/latest", token="",
                             headers={"Host": "evil.example"})
        assert forged.status_code == 401
        assert forged.headers["www-authenticate"].startswith(
            f'Bearer realm="{private.url}/registry/token"'), forged.headers
        assert "evil.example" not in forged.headers["www-authenticate"]
        refused = _skopeo("inspect", "--tls-verify=false", _ref(private, "hello"), check=False)
        assert refused.returncode != 0

        created = private.request("POST", "/api/v1/tokens",
                                  json={"name": "puller", "scopes": ["registry:pull"]})
        other = private.request("POST", "/api/v1/tokens",
                                json={"name": "cache only", "scopes": ["cache:demo:pull"]})
        inspected = _skopeo("inspect", "--tls-verify=false", "--creds",
                            f"anyone:{created.json()['secret']}", _ref(private, "hello"))
        assert json.loads(inspected.stdout)["Architecture"] == "amd64"
        denied = _skopeo("inspect", "--tls-verify=false", "--creds",
                         f"anyone:{other.json()['secret']}", _ref(private, "hello"), check=False)
        assert denied.returncode != 0
        _check_pull_tokens(private, created.json())
    finally:
        private.stop()


def _refused(farm: RunningFarm, path: str, token: str, why: str) -> None:
    """``token`` gets 401 on the registry ``path``, with the challenge to fetch a new one."""
    response = farm.get(path, token=token)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith(
        f'Bearer realm="{farm.url}/registry/token"')
    [error] = response.json()["errors"]
    assert error["code"] == "UNAUTHORIZED" and why in error["message"]


def _check_pull_tokens(farm: RunningFarm, puller: dict[str, object]) -> None:
    """The token endpoint's short-lived pull tokens: they pull, expire, and nothing else."""
    answer = farm.get("/registry/token", token="", auth=("anyone", str(puller["secret"])))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    short = body["token"]
    assert short.startswith("nfr_") and short != puller["secret"]
    assert body["access_token"] == short and body["expires_in"] == 120
    assert body["issued_at"].endswith("Z")

    manifest = farm.get("/v2/hello/manifests/latest", token=short,
                        headers={"Accept": DOCKER_MANIFEST})
    assert manifest.status_code == 200
    layer = manifest.json()["layers"][0]["digest"]
    assert farm.get(f"/v2/hello/blobs/{layer}", token=short).status_code == 200
    inspected = _skopeo("inspect", "--tls-verify=false", "--registry-token", short,
                        _ref(farm, "hello"))
    assert json.loads(inspected.stdout)["Architecture"] == "amd64"

    # Minted with the farm's own key, but expired: refused, and so is a tampered one.
    key = (farm.data_dir / DEFAULT_FILES[REGISTRY_TOKEN]).read_bytes()
    expired = mint(key, int(str(puller["id"])), 1, now=time.time() - 5)
    _refused(farm, "/v2/hello/manifests/latest", expired, "expired")
    _refused(farm, "/v2/", expired, "expired")
    tampered = short[:8] + ("A" if short[8] != "A" else "B") + short[9:]  # in the claims
    _refused(farm, f"/v2/hello/blobs/{layer}", tampered, "not valid")

    # Even one issued for the admin token can only pull: the API and caches refuse it,
    # and the token endpoint does not trade it for a fresh one.
    admin_short = farm.get("/registry/token", token="", auth=("x", farm.token)).json()["token"]
    assert farm.get("/v2/", token=admin_short).status_code == 200
    for method, path in [("GET", "/api/v1/caches"), ("GET", "/api/v1/tokens"),
                         ("PUT", "/cache/demo/nix-cache-info")]:
        assert farm.request(method, path, token=admin_short).status_code == 401, path
    assert farm.get("/registry/token", token="",
                    auth=("x", admin_short)).status_code == 401

    # Revoking the nixfarm token revokes its pull tokens at once (on this server; others
    # within their one-second memo).
    assert farm.get("/v2/", token=short).status_code == 200  # remembered as live
    revoked = farm.request("DELETE", f"/api/v1/tokens/{puller['id']}")
    assert revoked.status_code == 200
    _refused(farm, "/v2/hello/manifests/latest", short, "revoked")


def test_a_farm_without_a_source_still_serves_and_says_why(farm: RunningFarm) -> None:
    assert farm.get("/healthz").status_code == 200
    response = _manifest(farm, "hello")
    assert response.status_code == 503
    [error] = response.json()["errors"]
    assert error["code"] == "UNAVAILABLE" and "no package source" in error["message"]


def test_a_bad_source_stops_the_server_at_start(tmp_path: Path) -> None:
    config = tmp_path / "nixfarm.toml"
    config.write_text(f'[registry.source]\nkind = "path"\nlocation = "{tmp_path}/missing"\n')
    done = subprocess.run([NIXFARM, "up", "--data-dir", str(tmp_path / "data"), "--listen",
                           f"127.0.0.1:{free_port()}", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "registry.source.location" in done.stderr and "missing" in done.stderr
