"""The edge's parts on their own: nginx accepts every configuration we render, the
published tree refuses what it must, and access log lines become metrics."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from nixfarm.config import Settings, load
from nixfarm.edge import accesslog, nginx
from nixfarm.edge import registry as registry_edge
from nixfarm.edge.layout import EdgeLayout
from nixfarm.edge.tree import EdgeTree
from nixfarm.errors import ConfigError
from nixfarm.metrics import Metrics
from nixfarm.oci.digest import Digest


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return load(environ={}, overrides={"data_dir": str(tmp_path / "data"), **overrides})


@pytest.mark.parametrize("require_auth", [False, True])
@pytest.mark.parametrize("s3", [False, True])
def test_nginx_accepts_every_rendered_configuration(tmp_path: Path, require_auth: bool,
                                                    s3: bool) -> None:
    settings = _settings(tmp_path, registry={"require_auth": require_auth})
    layout = EdgeLayout.of(settings)
    layout.reset()
    store = None if s3 else tmp_path / "store"
    text = nginx.render(settings, layout, store)
    layout.config.write_text(text)
    binary = nginx.binary(settings)
    assert binary is not None
    done = subprocess.run([binary, "-t", "-c", str(layout.config), "-p", str(layout.run)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert ("/manifests/" in text) is not require_auth  # no registry answers behind auth
    assert ("/registry/blobs/sha256/" in text) is (not require_auth and not s3)
    assert "location @app" in text and "internal;" in text


def test_a_path_nginx_cannot_hold_is_a_clear_error(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "my data")
    with pytest.raises(ConfigError, match="nginx's configuration cannot hold") as caught:
        nginx.render(settings, EdgeLayout.of(settings), None)
    assert caught.value.key == "data_dir"


def test_a_missing_nginx_is_a_clear_error_only_when_asked_for(tmp_path: Path) -> None:
    asked = _settings(tmp_path, edge={"server": "nginx", "nginx": "/nonexistent/nginx"})
    with pytest.raises(ConfigError, match="not installed"):
        nginx.binary(asked)
    auto = _settings(tmp_path, edge={"server": "auto", "nginx": "/nonexistent/nginx"})
    assert nginx.binary(auto) is None
    assert nginx.binary(_settings(tmp_path, edge={"server": "none"})) is None


def test_the_tree_publishes_atomically_and_refuses_escapes(tmp_path: Path) -> None:
    layout = EdgeLayout(tmp_path / "edge")
    layout.reset()
    tree = EdgeTree(layout)
    tree.publish("cache/demo/abc.narinfo", b"one")
    tree.publish("cache/demo/abc.narinfo", b"two")
    assert tree.path("cache/demo/abc.narinfo").read_bytes() == b"two"
    assert [p.name for p in tree.path("cache/demo").iterdir()] == ["abc.narinfo"]
    for bad in ("../x", "/etc/passwd", "a/../../x", "a b", 'a"b'):
        with pytest.raises(ValueError):
            tree.publish(bad, b"x")
    stored = tmp_path / "edge" / "stored"
    stored.write_bytes(b"nar")
    assert tree.link("cache/demo/nar/x.nar", stored)
    assert tree.path("cache/demo/nar/x.nar").stat().st_ino == stored.stat().st_ino
    tree.remove("cache/demo/abc.narinfo")
    assert not tree.has("cache/demo/abc.narinfo")


def test_tags_are_an_nginx_map_rewritten_whole(tmp_path: Path) -> None:
    layout = EdgeLayout(tmp_path / "edge")
    layout.reset()
    tree = EdgeTree(layout)
    tree.add_tag("/v2/hello/manifests/latest", "a" * 64)
    tree.add_tag("/v2/busybox/manifests/latest", "b" * 64)
    assert tree.tags() == {"/v2/hello/manifests/latest": "a" * 64,
                           "/v2/busybox/manifests/latest": "b" * 64}
    assert layout.tags_map.read_text().splitlines()[0] == \
        f'"/v2/busybox/manifests/latest" {"b" * 64};'
    with pytest.raises(ValueError):
        tree.add_tag('/v2/x"; default 1; "', "a" * 64)
    tree.clear_tags()
    assert tree.tags() == {} and layout.tags_map.read_text() == ""


def _sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_access_log_lines_become_metrics(tmp_path: Path) -> None:
    metrics = Metrics()
    layout = EdgeLayout(tmp_path / "edge")
    layout.reset()
    follower = accesslog.LogFollower(layout, metrics)
    with layout.access_log.open("ab") as f:
        f.write(b"static GET 200 534 0.000 /cache/demo/x.narinfo\n"
                b"static GET 404 0 0.001 /cache/demo/y.narinfo\n"
                b"garbage\n"
                b"accel GET 206 10 0.002 /cache/priv/nar/z.nar.zst\n"
                b"static GET 200 534 0.000 /cache/demo/x.nar")  # not complete yet
    follower.read()
    assert _sample(metrics, "nixfarm_cache_narinfo_lookups_total",
                   {"cache": "demo", "result": "hit"}) == 1
    assert _sample(metrics, "nixfarm_http_requests_total",
                   {"route": "cache_nar", "method": "GET", "status": "206"}) == 1
    assert _sample(metrics, "nixfarm_http_response_bytes_total", {"route": "cache_narinfo"}) \
        == 534
    assert _sample(metrics, "nixfarm_http_request_seconds_count", {"route": "cache_narinfo"}) \
        == 2
    assert _sample(metrics, "nixfarm_http_request_seconds_count", {"route": "cache_nar"}) == 0
    with layout.access_log.open("ab") as f:
        f.write(b"info\n")  # the rest of the half-written line
    follower.read()
    assert _sample(metrics, "nixfarm_cache_narinfo_lookups_total",
                   {"cache": "demo", "result": "hit"}) == 2


@pytest.mark.anyio
async def test_a_large_access_log_is_rotated_without_losing_lines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics()
    layout = EdgeLayout(tmp_path / "edge")
    layout.reset()
    reopened: list[int] = []
    monkeypatch.setattr(accesslog, "ROTATE_BYTES", 100)
    monkeypatch.setattr("os.kill", lambda pid, sig: reopened.append(sig))
    monkeypatch.setattr(accesslog, "REOPEN_SECONDS", 0.0)
    layout.pid_file.write_text("12345\n")
    line = b"static GET 200 534 0.000 /cache/demo/x.narinfo\n"
    layout.access_log.write_bytes(line * 3)
    follower = accesslog.LogFollower(layout, metrics)
    follower.read()
    with layout.access_log.open("ab") as f:  # written after the read, before the rename
        f.write(line)
    await follower.rotate_if_large()
    assert reopened == [signal.SIGUSR1]
    assert not layout.access_log.exists() and not layout.access_log.with_suffix(
        ".log.old").exists()
    layout.access_log.write_bytes(line)  # nginx's new file
    follower.read()
    assert _sample(metrics, "nixfarm_cache_narinfo_lookups_total",
                   {"cache": "demo", "result": "hit"}) == 5



@pytest.mark.anyio
async def test_new_tags_reload_nginx_at_most_once_a_second(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    layout = EdgeLayout(tmp_path / "edge")
    layout.reset()
    tree = EdgeTree(layout)
    reloads: list[float] = []
    monkeypatch.setattr(tree, "reload", lambda: reloads.append(time.monotonic()))
    monkeypatch.setattr(registry_edge, "RELOAD_SECONDS", 0.3)
    edge = registry_edge.RegistryEdge(tree)
    manifest = b'{"schemaVersion":2}'
    for name in ("a", "b", "c"):
        edge.tag(f"/v2/{name}/manifests/latest", manifest, Digest.of(manifest))
    assert len(reloads) == 1  # the first at once, the others wait
    assert len(tree.tags()) == 3  # but the map already holds all three
    await anyio.sleep(0.5)
    assert len(reloads) == 2 and reloads[1] - reloads[0] >= 0.25
    edge.tag("/v2/a/manifests/latest", manifest, Digest.of(manifest))  # known
    await anyio.sleep(0.5)
    assert len(reloads) == 2
