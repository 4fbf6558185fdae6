"""The cache protocol's edges over real HTTP: bad input, auth, ranges, metrics, crashes.

Every refusal must be a clear 4xx and leave the cache exactly as it was.
"""

from __future__ import annotations

import base64
import hashlib
import json
import lzma
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nixfarm.nix import nix32
from nixfarm.nix.nar import dump
from tests.fixtures.farm import RunningFarm, free_port
from tests.fixtures.nixenv import Nix

FAKE = "/nix/store/0c0d9lfs2m2r7bsn5pw1c5fg5wgn0zbf-sample-1.0"


def _nar(tmp_path: Path, content: bytes = b"sample contents\n") -> bytes:
    root = tmp_path / f"tree-{hashlib.sha256(content).hexdigest()[:8]}"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "sample").write_bytes(content)
    return b"".join(dump(root))


def _h(data: bytes) -> str:
    return nix32.encode(hashlib.sha256(data).digest())


def _narinfo(nar: bytes, file: bytes, url: str, compression: str, *,
             path: str = FAKE, nar_hash: str | None = None) -> str:
    return (f"StorePath: {path}\nURL: {url}\nCompression: {compression}\n"
            f"FileHash: sha256:{_h(file)}\nFileSize: {len(file)}\n"
            f"NarHash: {nar_hash or 'sha256:' + _h(nar)}\nNarSize: {len(nar)}\nReferences: \n")


def _stored(farm: RunningFarm) -> set[str]:
    root = farm.data_dir / "store"
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and ".tmp" not in p.parts}


def _paths(farm: RunningFarm, cache: str) -> int:
    count: int = farm.get(f"/api/v1/caches/{cache}").json()["paths"]
    return count


def test_nix_protocol_upload_by_hand_then_bad_uploads_change_nothing(
        farm: RunningFarm, tmp_path: Path) -> None:
    cache, _ = farm.create_cache()
    nar = _nar(tmp_path)
    xz = lzma.compress(nar)
    url = f"nar/{_h(xz)}.nar.xz"
    assert farm.request("PUT", f"/cache/{cache}/{url}", content=xz).status_code == 200
    good = _narinfo(nar, xz, url, "xz")
    hash_part = FAKE.split("/")[-1][:32]

    # A narinfo whose NarHash does not match its NAR.
    wrong = _narinfo(nar, xz, url, "xz", nar_hash="sha256:" + _h(b"something else"))
    r = farm.request("PUT", f"/cache/{cache}/{hash_part}.narinfo", content=wrong)
    assert r.status_code == 400 and "NarHash" in r.text
    assert farm.get(f"/cache/{cache}/{hash_part}.narinfo").status_code == 404

    before = _stored(farm)
    # A NAR file whose bytes don't hash to its name (a truncated upload, say).
    other = lzma.compress(_nar(tmp_path, b"other\n"))
    r = farm.request("PUT", f"/cache/{cache}/nar/{_h(other)}.nar.xz", content=other[:-20])
    assert r.status_code == 400, r.text
    assert farm.get(f"/cache/{cache}/nar/{_h(other)}.nar.xz").status_code == 404
    # A narinfo naming a NAR that was never uploaded.
    r = farm.request("PUT", f"/cache/{cache}/{hash_part}.narinfo",
                     content=_narinfo(nar, other, f"nar/{_h(other)}.nar.xz", "xz"))
    assert r.status_code == 400 and "not uploaded" in r.text
    # Path names that try to escape.
    for bad in ("nar/..%2F..%2Fetc%2Fpasswd", "nar/../../etc/passwd", "log/..%2Fx.drv",
                "..%2F..%2Fadmin.token", "nar/%2Fetc%2Fpasswd.nar"):
        for method in ("GET", "PUT"):
            r = farm.request(method, f"/cache/{cache}/{bad}", content=b"x")
            assert 400 <= r.status_code < 500, (method, bad, r.status_code)
    slash = good.replace(FAKE, FAKE.rsplit("-", 1)[0] + "-a/b")
    r = farm.request("PUT", f"/cache/{cache}/{hash_part}.narinfo", content=slash)
    assert r.status_code == 400
    dots = good.replace(FAKE, "/nix/store/../../etc/passwd")
    assert farm.request("PUT", f"/cache/{cache}/{hash_part}.narinfo",
                        content=dots).status_code == 400
    # Garbage instead of a narinfo.
    r = farm.request("PUT", f"/cache/{cache}/{hash_part}.narinfo", content=b"\xff\xfe")
    assert r.status_code == 400
    assert _stored(farm) == before
    assert _paths(farm, cache) == 0

    # The good narinfo goes in, is served re-signed, and nothing else changed.
    r = farm.request("PUT", f"/cache/{cache}/{hash_part}.narinfo", content=good)
    assert r.status_code == 200 and r.headers["content-length"] == "0"
    served = farm.get(f"/cache/{cache}/{hash_part}.narinfo", token="")
    assert served.status_code == 200 and "Sig: " in served.text
    assert served.headers["content-type"].startswith("text/x-nix-narinfo")
    assert farm.get(f"/cache/{cache}/{url}", token="").content == xz
    assert _paths(farm, cache) == 1


def test_every_narinfo_field_is_checked_and_closures_are_complete(
        farm: RunningFarm, tmp_path: Path) -> None:
    cache, _ = farm.create_cache()
    nar = _nar(tmp_path, b"a field-checked path\n")
    xz = lzma.compress(nar)
    url = f"nar/{_h(xz)}.nar.xz"
    assert farm.request("PUT", f"/cache/{cache}/{url}", content=xz).status_code == 200
    good = _narinfo(nar, xz, url, "xz")
    put = f"/cache/{cache}/{FAKE.split('/')[-1][:32]}.narinfo"
    dep = "/nix/store/1b72lzcq7vbmslgfga36vwxlaz4wml4z-dep-1.0"
    sig = "key-1:" + base64.b64encode(bytes(64)).decode()
    for change, field, status in (
            (("References: \n", "References: 5rl3hy8x0f0f0nn8jcf13zkxd1n19q-x\n"),
             "References", 400),
            (("References: \n", "References: 0c0d9lfs2m2r7bsn5pw1c5fg5wgn0zbf-sample-1.0 "
              f"{dep.split('/')[-1]}\n"), dep.split("/")[-1], 409),
            ((None, "CA: fixed:r:sha256:xyz\n"), "CA", 400),
            ((None, "CA: fixed:r:sha1024:" + "0" * 52 + "\n"), "CA", 400),
            ((None, "CA: source:sha256:" + _h(nar) + "\n"), "CA", 400),
            ((None, "Sig: key-1:c2lnbmF0dXJl\n"), "Sig", 400),
            ((None, "Sig: " + sig.replace("key-1:", "key 1:") + "\n"), "Sig", 400),
            ((None, "Deriver: 0c0d9lfs2m2r7bsn5pw1c5fg5wgn0zbf-sample-1.0\n"), "Deriver", 400),
            (("Compression: xz", "Compression: bzip2"), "Compression", 400),
            (("Compression: xz", "Compression: x z"), "Compression", 400),
            ((f"FileSize: {len(xz)}", f"FileSize: {len(xz) + 1}"), "FileSize", 400),
            ((f"FileHash: sha256:{_h(xz)}", f"FileHash: sha256:{_h(nar)}"), "FileHash", 400),
            ((f"NarSize: {len(nar)}", f"NarSize: {len(nar) - 1}"), "NarSize", 400),
            (("URL: nar/", "URL: nar/ "), "URL", 400),
    ):
        old, new = change
        text = good + new if old is None else good.replace(old, new)
        assert text != good
        r = farm.request("PUT", put, content=text)
        assert r.status_code == status and field in r.text, (change, r.status_code, r.text)
        assert "\n" not in r.text.strip()
    assert _paths(farm, cache) == 0
    # What Nix writes for content-addressed paths is accepted (and signatures are kept
    # out: the cache signs with its own key), and a path may reference itself.
    for ca in (f"fixed:r:sha256:{_h(nar)}", f"text:sha256:{_h(nar)}",
               f"fixed:sha1:{'0' * 40}", f"fixed:r:sha256:{hashlib.sha256(nar).hexdigest()}"):
        own = "References: 0c0d9lfs2m2r7bsn5pw1c5fg5wgn0zbf-sample-1.0\n"
        text = good.replace("References: \n", own) + f"Sig: {sig}\nCA: {ca}\n"
        r = farm.request("PUT", put, content=text)
        assert r.status_code == 200, (ca, r.text)
        assert f"CA: {ca}\n" in farm.get(put).text
        assert sig not in farm.get(put).text
    # Once its reference is in, the path that needed it goes in too.
    dep_nar = _nar(tmp_path, b"the dependency\n")
    dep_url = f"nar/{_h(dep_nar)}.nar"
    assert farm.request("PUT", f"/cache/{cache}/{dep_url}", content=dep_nar).status_code == 200
    user = "/nix/store/2b72lzcq7vbmslgfga36vwxlaz4wml4z-user-1.0"
    user_put = f"/cache/{cache}/{user.split('/')[-1][:32]}.narinfo"
    user_text = _narinfo(dep_nar, dep_nar, dep_url, "none", path=user).replace(
        "References: \n", f"References: {FAKE.split('/')[-1]}\n")
    assert farm.request("PUT", user_put, content=user_text).status_code == 200, user_text
    assert _paths(farm, cache) == 2
    # nixfarm push's endpoint holds paths to the same rule, before storing anything.
    before = _stored(farm)
    other_nar = _nar(tmp_path, b"pushed out of order\n")
    info = {"store_path": dep, "nar_hash": "sha256:" + _h(other_nar),
            "nar_size": len(other_nar), "compression": "none",
            "references": ["3b72lzcq7vbmslgfga36vwxlaz4wml4z-missing-1.0"]}
    r = farm.request("PUT", f"/api/v1/caches/{cache}/paths/{dep.split('/')[-1]}",
                     content=other_nar, headers={"X-Nixfarm-Path-Info": json.dumps(info)})
    assert r.status_code == 409 and "4z-missing-1.0" in r.json()["error"]["message"], r.text
    assert _stored(farm) == before


def test_truncated_and_lying_pushes_are_refused(farm: RunningFarm, tmp_path: Path) -> None:
    cache, _ = farm.create_cache()
    nar = _nar(tmp_path)
    basename = FAKE.split("/")[-1]
    info = {"store_path": FAKE, "nar_hash": "sha256:" + _h(nar), "nar_size": len(nar),
            "references": [], "compression": "none"}
    before = _stored(farm)
    for body, claimed, error in (
            (nar[:-7], info, "archive ends early"),
            (nar, {**info, "nar_size": len(nar) + 1}, "not sha256"),
            (nar, {**info, "nar_hash": "sha256:" + _h(b"x")}, "not sha256"),
            (nar + b"\0" * 8, {**info, "nar_size": len(nar) + 8}, "follows the end"),
            # A content address with a line of its own would be served in the narinfo.
            (nar, {**info, "ca": f"fixed:r:sha256:{_h(nar)}\nDeriver: x"}, "ca: "),
            (nar, {**info, "ca": "nonsense"}, "ca: ")):
        r = farm.request("PUT", f"/api/v1/caches/{cache}/paths/{basename}", content=body,
                         headers={"X-Nixfarm-Path-Info": json.dumps(claimed)})
        assert r.status_code == 400, r.text
        assert error in r.json()["error"]["message"], r.text
        if "ca" in claimed:
            assert r.json()["error"]["field"] == "ca", r.text
    r = farm.request("PUT", f"/api/v1/caches/{cache}/paths/{basename}", content=b"junk",
                     headers={"X-Nixfarm-Path-Info": json.dumps({**info, "compression": "xz"})})
    assert r.status_code == 400
    r = farm.request("PUT", f"/api/v1/caches/{cache}/paths/other-name", content=nar,
                     headers={"X-Nixfarm-Path-Info": json.dumps(info)})
    assert r.status_code == 400
    assert _stored(farm) == before
    assert _paths(farm, cache) == 0
    r = farm.request("PUT", f"/api/v1/caches/{cache}/paths/{basename}", content=nar,
                     headers={"X-Nixfarm-Path-Info": json.dumps(info)})
    assert r.status_code == 201, r.text
    assert _paths(farm, cache) == 1


def test_tokens_scopes_and_unknown_caches(farm: RunningFarm, tmp_path: Path) -> None:
    cache, _ = farm.create_cache()
    other, _ = farm.create_cache()
    hash_part = FAKE.split("/")[-1][:32]
    nar = _nar(tmp_path)
    put = f"/cache/{cache}/nar/{_h(nar)}.nar"

    r = farm.request("PUT", put, token="", content=nar)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert farm.request("PUT", put, token="nf_wrong", content=nar).status_code == 401
    bad_basic = farm.request("PUT", put, token="", content=nar, auth=("u", "nf_nope"))
    assert bad_basic.status_code == 401
    push_other = farm.cli("token", "create", "--scope", f"cache:{other}:push").stdout.strip()
    r = farm.request("PUT", put, token=push_other, content=nar)
    assert r.status_code == 403 and f"cache:{cache}:push" in r.text
    assert farm.request("POST", "/api/v1/caches", token=push_other,
                        json={"name": "nope"}).status_code == 403
    pusher = farm.cli("token", "create", "--scope", f"cache:{cache}:push").stdout.strip()
    assert farm.request("PUT", put, token=pusher, content=nar).status_code == 200
    # Revoked tokens stop working (after the server's short memo of valid tokens).
    token_id = next(t["id"] for t in farm.get("/api/v1/tokens").json()
                    if t["scopes"] == [f"cache:{cache}:push"])
    farm.cli("token", "revoke", str(token_id))
    time.sleep(5.5)
    assert farm.request("PUT", put, token=pusher, content=nar).status_code == 401

    for method, path in (("GET", "/cache/nope/nix-cache-info"),
                         ("GET", f"/cache/nope/{hash_part}.narinfo"),
                         ("PUT", f"/cache/nope/nar/{_h(nar)}.nar"),
                         ("GET", "/api/v1/caches/nope")):
        r = farm.request(method, path, content=nar if method == "PUT" else None)
        assert r.status_code == 404 and "nope" in r.text, (method, path)


def test_private_cache_needs_a_pull_token(farm: RunningFarm, nix: Nix) -> None:
    cache, key = farm.create_cache(private=True)
    hello = nix.build("hello")
    farm.cli("push", "--cache", cache, hello)
    hash_part = Path(hello).name[:32]
    narinfo = f"/cache/{cache}/{hash_part}.narinfo"
    assert cache not in farm.get("/api/v1/caches", token="").text
    puller = farm.cli("token", "create", "--scope", f"cache:{cache}:pull").stdout.strip()
    assert farm.get(narinfo, token=puller).status_code == 200
    assert farm.request("PUT", narinfo, token=puller, content=b"").status_code == 403

    # Without a token that may read it, a private cache answers as a missing one: same
    # status, same body, for every path and method, so its existence does not leak.
    other = farm.cli("token", "create", "--scope", "cache:elsewhere:pull").stdout.strip()
    missing = "no-such-cache"
    for method, path in (("GET", "/nix-cache-info"), ("GET", f"/{hash_part}.narinfo"),
                         ("HEAD", f"/{hash_part}.narinfo"), ("PUT", f"/{hash_part}.narinfo"),
                         ("GET", f"/nar/{'0' * 52}.nar.xz"), ("PUT", f"/log/{'0' * 32}-x.drv"),
                         ("GET", "/anything/else")):
        for token, auth in (("", None), ("nf_unknown", None), (other, None),
                            ("", ("user", "nf_unknown"))):
            answers = []
            for name in (cache, missing):
                r = farm.request(method, f"/cache/{name}{path}", token=token, auth=auth,
                                 content=b"x" if method == "PUT" else None)
                answers.append((r.status_code, r.text.replace(name, "NAME"),
                                "www-authenticate" in r.headers))
            assert answers[0] == answers[1], (method, path, token, answers)
            assert answers[0][0] == 404, (method, path, token, answers)
    for suffix in ("", "/missing", "/gc"):
        api_answers = []
        for name in (cache, missing):
            method = "GET" if not suffix else "POST"
            for token in ("", other):
                r = farm.request(method, f"/api/v1/caches/{name}{suffix}", token=token,
                                 json={"paths": []} if suffix == "/missing" else None)
                api_answers.append((r.status_code, r.text.replace(name, "NAME")))
        assert api_answers[:2] == api_answers[2:], (suffix, api_answers)
    assert farm.get(f"/api/v1/caches/{cache}", token="").status_code == 404
    # A token that may read it gets the usual distinctions: 200 to read, 403 to push.
    assert farm.get(f"/api/v1/caches/{cache}", token=puller).status_code == 200

    denied = nix.substitute(nix.fresh_store("anon"), hello, f"{farm.url}/cache/{cache}", key,
                            check=False)
    assert denied.returncode != 0
    store = nix.fresh_store("netrc")
    nix.substitute(store, hello, f"{farm.url}/cache/{cache}", key, netrc=nix.netrc(puller))
    assert (store / hello.lstrip("/") / "bin" / "hello").exists()


def test_ranges_head_metrics_and_health(farm: RunningFarm, nix: Nix) -> None:
    cache, _ = farm.create_cache()
    big = nix.build("bigdata")
    farm.cli("push", "--cache", cache, "--compression", "none", big)
    info = farm.get(f"/cache/{cache}/{Path(big).name[:32]}.narinfo").text
    url = next(line.split(": ", 1)[1] for line in info.splitlines() if line.startswith("URL:"))
    size = int(next(line.split(": ")[1] for line in info.splitlines()
                    if line.startswith("FileSize:")))
    whole = farm.data_dir / "store" / url
    r = farm.get(f"/cache/{cache}/{url}", headers={"Range": "bytes=1000-1999"})
    assert r.status_code == 206 and r.content == whole.read_bytes()[1000:2000]
    assert r.headers["content-range"] == f"bytes 1000-1999/{size}"
    head = farm.request("HEAD", f"/cache/{cache}/{url}")
    assert head.status_code == 200 and int(head.headers["content-length"]) == size
    assert head.content == b""
    head = farm.request("HEAD", f"/cache/{cache}/{Path(big).name[:32]}.narinfo")
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(info)
    farm.get(f"/cache/{cache}/{'0' * 32}.narinfo")

    # What nginx sent (the ranged NAR) is counted from its access log within ~1.5 s.
    nar_206 = 'nixfarm_http_requests_total{method="GET",route="cache_nar",status="206"}'
    deadline = time.monotonic() + 10
    while nar_206 not in (metrics := farm.get("/metrics", token="").text) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f'nixfarm_cache_narinfo_lookups_total{{cache="{cache}",result="hit"}}' in metrics
    assert f'nixfarm_cache_narinfo_lookups_total{{cache="{cache}",result="miss"}} 1.0' in metrics
    assert nar_206 in metrics
    served = next(float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith('nixfarm_http_response_bytes_total{route="cache_nar"}'))
    assert served >= 1000
    assert farm.get("/healthz", token="").json()["status"] == "ok"
    assert farm.get("/api/v1/openapi.json", token="").status_code == 200


@pytest.fixture
def own_farm(tmp_path: Path) -> Iterator[RunningFarm]:
    running = RunningFarm(tmp_path / "data", free_port())
    running.start()
    yield running
    running.stop(signal.SIGKILL)


def test_killing_the_server_mid_upload_leaves_no_visible_entry(own_farm: RunningFarm,
                                                              tmp_path: Path) -> None:
    farm = own_farm
    cache, _ = farm.create_cache()
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "data").write_bytes(os.urandom(40 << 20))
    nar = b"".join(dump(payload))
    path = "/nix/store/1c0d9lfs2m2r7bsn5pw1c5fg5wgn0zbf-big-1.0"
    info = {"store_path": path, "nar_hash": "sha256:" + _h(nar), "nar_size": len(nar),
            "compression": "none"}
    half_sent = threading.Event()

    def body() -> Iterator[bytes]:
        for start in range(0, len(nar), 1 << 20):
            if start > len(nar) // 2:
                half_sent.set()
                time.sleep(0.2)
            yield nar[start:start + (1 << 20)]

    def upload() -> None:
        try:
            with farm.client() as c:
                c.put(f"/api/v1/caches/{cache}/paths/{path.split('/')[-1]}", content=body(),
                      headers={"X-Nixfarm-Path-Info": json.dumps(info)})
        except httpx.HTTPError:
            pass

    uploader = threading.Thread(target=upload)
    uploader.start()
    assert half_sent.wait(30)
    farm.stop(signal.SIGKILL)
    uploader.join(30)
    farm.start()

    hash_part = path.split("/")[-1][:32]
    assert farm.get(f"/cache/{cache}/{hash_part}.narinfo").status_code == 404
    assert farm.request("POST", f"/api/v1/caches/{cache}/missing",
                        json={"paths": [path]}).json() == {"missing": [path]}
    assert not [k for k in _stored(farm) if k.startswith("nar/")]
    assert farm.get(f"/cache/{cache}/nar/{_h(nar)}.nar").status_code == 404
    # And the same upload, done fully, works after the restart.
    r = farm.request("PUT", f"/api/v1/caches/{cache}/paths/{path.split('/')[-1]}", content=nar,
                     headers={"X-Nixfarm-Path-Info": json.dumps(info)})
    assert r.status_code == 201, r.text
    assert farm.get(f"/cache/{cache}/{hash_part}.narinfo").status_code == 200
