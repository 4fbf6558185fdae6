"""The registry benchmark: layers, warm serving, layer reuse, memory.

    .venv/bin/python bench/registry_bench.py [--size-mb 300] [--memory-size-mb 1024]

One run, stopping by itself:

1. layers: a fresh ``bench.nix`` closure (>= 300 MiB) turned into one compressed layer
   per store path with its digests, one layer at a time: nixfarm's ``write_layer``
   (tar + sha256 of the tar + ISA-L gzip + sha256 of the gzip, in one pass) against GNU
   ``tar --sort=name | gzip -6 | sha256sum`` on the same paths; sizes compared too;
2. serving: a real ``nixfarm up`` builds an image of that closure through ``/v2/``, then
   warm manifest requests (wrk, median latency) and blob downloads (curl, 1 and 4
   connections) against nginx serving the same bytes from the same files;
3. reuse: the share of layer bytes of a 21-package image that the 20-package image
   without it already had;
4. memory: the server's process group RSS (sampled every 50 ms) while it builds and
   serves an image of a fresh ~1 GiB closure.

Results: a Markdown table on stdout and JSON in ``bench/out/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    DEMO,
    Nginx,
    Row,
    RssSampler,
    build_bench_closure,
    closure_of,
    curl_sweep,
    group_of,
    machine,
    nix_env,
    nixfarm_up,
    table,
    temp_dir,
    write_json,
    wrk,
)
from nixfarm.oci.layer import write_layer

DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
SMALL = ["busybox", "hello", "libgreeting", "greet", "cowsay", "banner-font", "banner",
         "fortunes", "fortune", "tree", "bashinteractive", "coreutils", "nano", "moreutils",
         "bigdata"]


def layers_phase(closure: list[str], work: Path) -> dict[str, Any]:
    """nixfarm vs tar|gzip|sha256sum, one store path per layer, one at a time."""
    out = work / "layer.out"
    start = time.perf_counter()
    ours = 0
    for path in closure:
        with out.open("wb") as f:
            ours += write_layer([path], f.write).size
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = 0
    for path in closure:
        script = (f"tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1 -cf - "
                  f"-C / {path.lstrip('/')} | gzip -6 | tee {out} | sha256sum")
        subprocess.run(["sh", "-c", script], check=True, capture_output=True)
        theirs += out.stat().st_size
    theirs_s = time.perf_counter() - start
    total = sum(int(subprocess.run(["du", "-sb", p], capture_output=True, text=True,
                                   check=True).stdout.split()[0]) for p in closure)
    return {"bytes": total, "nixfarm_s": ours_s, "baseline_s": theirs_s,
            "nixfarm_size": ours, "gzip6_size": theirs}


def _source(work: Path, seeds: dict[str, tuple[int, int, str]]) -> Path:
    """A package set: the demo set plus bench closures (attr -> (MiB, count, seed))."""
    src = work / "source"
    src.mkdir(exist_ok=True)
    extra = "\n".join(
        f'  {name} = import {DEMO}/bench.nix {{ totalMB = {mb}; count = {count}; '
        f'seed = "{seed}"; }};' for name, (mb, count, seed) in seeds.items())
    (src / "default.nix").write_text(
        f"{{ system ? builtins.currentSystem }}:\nimport {DEMO} {{ inherit system; }} // {{\n"
        f"{extra}\n}}\n")
    return src


@contextlib.contextmanager
def registry_server(work: Path, source: Path) -> Iterator[tuple[str, int]]:
    """A farm whose registry builds from ``source``; (its URL, its process group)."""
    config = work / "nixfarm.toml"
    config.write_text(f'[nix_options]\nsubstituters = ""\n\n[registry]\nnix_timeout = 900\n\n'
                      f'[registry.source]\nkind = "path"\nlocation = "{source}"\n')
    with nixfarm_up(work / "data", "--config", str(config)) as server:
        yield server.url, group_of(server)


CONTAINERS_ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.v1+prettyjws, "
    "application/vnd.docker.distribution.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.index.v1+json")


def _manifest(url: str, name: str) -> httpx.Response:
    response = httpx.get(f"{url}/v2/{name}/manifests/latest", headers={"Accept": DOCKER},
                         timeout=1800)
    response.raise_for_status()
    return response


def serve_phase(url: str, work: Path) -> dict[str, Any]:
    manifest = _manifest(url, "bench").content  # builds the image (cold)
    store = work / "data" / "store"
    (store / "bench-manifest").write_bytes(manifest)
    blobs = [layer["digest"] for layer in json.loads(manifest)["layers"]]
    ours_urls = [f"{url}/v2/bench/blobs/{d}" for d in blobs]
    results: dict[str, Any] = {"layers": len(blobs)}
    with Nginx(store, work / "nginx").running() as nginx:
        theirs_urls = [f"{nginx.url}/registry/blobs/sha256/{d[7:]}" for d in blobs]
        for connections in (1, 4):
            curl_sweep(ours_urls, connections, work)  # warm both page caches
            results[f"blob_{connections}"] = {
                "nixfarm": curl_sweep(ours_urls * 2, connections, work),
                "nginx": curl_sweep(theirs_urls * 2, connections, work)}
        results["manifest"] = {
            # Asked for as skopeo and podman ask (containers/image's Accept header).
            "nixfarm": wrk(url, ["/v2/bench/manifests/latest"], 1, 5, work,
                           headers={"Accept": CONTAINERS_ACCEPT}),
            "nginx": wrk(nginx.url, ["/bench-manifest"], 1, 5, work)}
    return results


def reuse_phase(url: str) -> dict[str, Any]:
    small_names = [*SMALL, "p1", "p2", "p3", "p4", "p5"]
    small = _manifest(url, "/".join(small_names)).json()["layers"]
    big = _manifest(url, "/".join([*small_names, "motd"])).json()["layers"]
    had = {layer["digest"] for layer in small}
    reused = sum(layer["size"] for layer in big if layer["digest"] in had)
    total = sum(layer["size"] for layer in big)
    return {"packages": len(small_names), "reused_bytes": reused, "total_bytes": total,
            "share": reused / total, "layers": len(big),
            "layers_reused": sum(1 for layer in big if layer["digest"] in had)}


def memory_phase(url: str, group: int, work: Path) -> dict[str, Any]:
    with RssSampler(group) as sampler:
        manifest = _manifest(url, "large").json()
        curl_sweep([f"{url}/v2/large/blobs/{layer['digest']}" for layer in manifest["layers"]],
                   4, work)
    return {"image_bytes": sum(layer["size"] for layer in manifest["layers"]),
            **sampler.summary()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--memory-size-mb", type=int, default=1024)
    args = parser.parse_args()
    info = machine()
    tag = uuid.uuid4().hex[:8]
    with temp_dir("nixfarm-registry-bench-") as work:
        env = nix_env(work)
        top, _ = build_bench_closure(args.size_mb, 30, f"r{tag}", work / "bench", env)
        closure = closure_of(top)
        print(f"closure: {len(closure)} paths", file=sys.stderr)
        layers = layers_phase(closure, work)
        seeds = {"bench": (args.size_mb, 30, f"r{tag}"),
                 "large": (args.memory_size_mb, 40, f"m{tag}"),
                 **{f"p{i}": (4, 3, f"p{i}{tag}") for i in range(1, 6)}}
        source = _source(work, seeds)
        with registry_server(work, source) as (url, group):
            serve = serve_phase(url, work)
            reuse = reuse_phase(url)
            memory = memory_phase(url, group, work)
    mib = layers["bytes"] / 2**20
    rows = [
        Row("closure to gzip layers + digests", "MiB/s", mib / layers["nixfarm_s"],
            mib / layers["baseline_s"], "tar|gzip -6|sha256sum", ">= 4x",
            mib / layers["nixfarm_s"] >= 4 * mib / layers["baseline_s"]),
        Row("compressed size", "MiB", layers["nixfarm_size"] / 2**20,
            layers["gzip6_size"] / 2**20, "gzip -6", "<= 1.15x",
            layers["nixfarm_size"] <= 1.15 * layers["gzip6_size"]),
    ]
    for connections in (1, 4):
        sweep = serve[f"blob_{connections}"]
        ours, theirs = sweep["nixfarm"], sweep["nginx"]
        rows.append(Row(f"warm blobs, {connections} connection(s)", "MiB/s", ours.mib_per_s,
                        theirs.mib_per_s, "nginx", ">= 0.8x",
                        ours.mib_per_s >= 0.8 * theirs.mib_per_s))
    ours_m, theirs_m = serve["manifest"]["nixfarm"], serve["manifest"]["nginx"]
    rows.append(Row("warm manifest, median latency", "us", ours_m.p50_us, theirs_m.p50_us,
                    "nginx", "<= 2x", ours_m.p50_us <= 2 * theirs_m.p50_us))
    new_kib = (reuse["total_bytes"] - reuse["reused_bytes"]) / 1024
    rows.append(Row("layer bytes reused adding 1 package to 20", "%", 100 * reuse["share"],
                    None, "", note=f"{reuse['layers_reused']}/{reuse['layers']} layers reused, "
                                   f"{new_kib:.0f} KiB new"))
    rows.append(Row(f"peak RSS, build + serve {memory['image_bytes'] / 2**30:.2f} GiB image",
                    "MiB", memory["peak_mib"], None, "", "< 250 MiB", memory["peak_mib"] < 250))
    print(table(rows))
    for row in rows:
        if row.note:
            print(f"- {row.name}: {row.note}")
    path = write_json("registry", {"machine": info, "layers": layers, "serve": serve,
                                   "reuse": reuse, "memory": memory,
                                   "rows": [r.__dict__ for r in rows]})
    print(f"\n{info['date']}, {info['nproc']} x {info['cpu']}; JSON in {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
