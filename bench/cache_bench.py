"""The binary cache benchmark: nixfarm against ``nix copy --to file://`` and nginx.

    .venv/bin/python bench/cache_bench.py [--size-mb 300] [--memory-size-mb 1024]

One run, stopping by itself (about three minutes on two cores):

1. build a fresh ``bench.nix`` closure (new seed: nothing is cached anywhere) and a
   second, larger one for the memory measurement;
2. upload: ``nixfarm push`` (zstd, 4 jobs) against ``nix copy --to file://`` (xz, Nix's
   default) of the same closure, plus ``nix copy`` with zstd as an extra line;
3. serve: nginx (sendfile) over the xz file:// cache against nixfarm over what it
   stored. NAR throughput is compared in bytes per second because the two hold
   differently compressed files; a like-for-like line serves one identical file
   from both. narinfo latency is wrk's median over sequential requests;
4. memory: the server's process group RSS, sampled every 50 ms while it ingests and
   then serves the large closure.

Results: a Markdown table on stdout and JSON in ``bench/out/``. Every server runs in
its own session and is stopped by process group; the temp dir and the store paths
built here are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    NIX,
    Nginx,
    Row,
    RssSampler,
    Sweep,
    build_bench_closure,
    closure_of,
    curl_sweep,
    group_of,
    group_rss_mib,
    machine,
    nix_env,
    nixfarm_up,
    socket_sweep,
    table,
    temp_dir,
    timed,
    timed_cli,
    write_json,
    wrk,
)
from tests.fixtures.farm import RunningFarm

CACHE = "bench"
MEMORY_GOAL_MIB = 250


def _hash_of(store_path: str) -> str:
    return store_path.rsplit("/", 1)[-1].split("-", 1)[0]


def _narinfo_fields(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def _nixfarm_nars(server: RunningFarm, closure: list[str]) -> tuple[list[str], int]:
    """The NAR URL paths nixfarm's narinfos name, and their total FileSize."""
    urls, total = [], 0
    with httpx.Client(base_url=server.url) as http:
        for path in closure:
            response = http.get(f"/cache/{CACHE}/{_hash_of(path)}.narinfo")
            response.raise_for_status()
            info = _narinfo_fields(response.text)
            urls.append(f"/cache/{CACHE}/{info['URL']}")
            total += int(info["FileSize"])
    return urls, total


def _file_cache_nars(root: Path, closure: list[str]) -> tuple[list[str], int]:
    urls, total = [], 0
    for path in closure:
        info = _narinfo_fields((root / f"{_hash_of(path)}.narinfo").read_text())
        urls.append(f"/{info['URL']}")
        total += int(info["FileSize"])
    return urls, total


def _repeat_to(urls: list[str], bytes_per_round: int, target: int) -> list[str]:
    """Repeat the sweep so one measurement moves at least ``target`` bytes: a 300 MB
    closure is gone in a tenth of a second at loopback speeds, too short to time."""
    rounds = max(1, -(-target // max(bytes_per_round, 1)))
    return urls * rounds


def _interleaved(runs: int, a: Any, b: Any) -> tuple[list[Any], list[Any]]:
    """Alternate the two measurements so drift on a shared machine hits both alike."""
    xs, ys = [], []
    for _ in range(runs):
        xs.append(a())
        ys.append(b())
    return xs, ys


def _median_by(results: list[Any], key: Any) -> Any:
    return sorted(results, key=key)[len(results) // 2]


def upload_phase(closure_path: str, work: Path, env: dict[str, str], server: RunningFarm
                 ) -> tuple[dict[str, Any], Path]:
    xz_root = work / "filecache-xz"
    zstd_root = work / "filecache-zstd"
    copy_xz = timed(["nix", *NIX, "copy", "--to", f"file://{xz_root}", closure_path], env)
    copy_zstd = timed(["nix", *NIX, "copy", "--to", f"file://{zstd_root}?compression=zstd",
                       closure_path], env)
    timed_cli(server, "cache", "create", CACHE)
    with RssSampler(group_of(server)) as rss:
        push = timed_cli(server, "push", "--cache", CACHE, closure_path)
    shutil.rmtree(zstd_root)
    return {"nix_copy_xz_s": copy_xz, "nix_copy_zstd_s": copy_zstd, "nixfarm_push_s": push,
            "push_rss": rss.summary()}, xz_root


def serve_phase(server: RunningFarm, nginx: Nginx, closure: list[str], xz_root: Path,
                work: Path, runs: int, seconds: float, sweep_bytes: int) -> dict[str, Any]:
    farm_urls, farm_bytes = _nixfarm_nars(server, closure)
    nginx_urls, nginx_bytes = _file_cache_nars(xz_root, closure)
    result: dict[str, Any] = {"nixfarm_closure_file_bytes": farm_bytes,
                              "nginx_closure_file_bytes": nginx_bytes}

    # Like for like: nixfarm's largest stored NAR file, served by nginx too.
    stored = {p.name: p for p in (server.data_dir / "store").rglob("*.nar*") if p.is_file()}
    largest = max(farm_urls, key=lambda u: stored[u.rsplit("/", 1)[-1]].stat().st_size)
    name = largest.rsplit("/", 1)[-1]
    shutil.copyfile(stored[name], xz_root / "nar" / name)
    result["same_file_bytes"] = stored[name].stat().st_size

    farm_sweep = _repeat_to(farm_urls, farm_bytes, sweep_bytes)
    nginx_sweep = _repeat_to(nginx_urls, nginx_bytes, sweep_bytes)
    same = _repeat_to([name], result["same_file_bytes"], sweep_bytes)
    for connections in (1, 4):
        xs, ys = _interleaved(
            runs,
            lambda c=connections: socket_sweep(server.url, farm_sweep, c),
            lambda c=connections: socket_sweep(nginx.url, nginx_sweep, c))
        result[f"closure_c{connections}"] = {"nixfarm": xs, "nginx": ys}
        xs, ys = _interleaved(
            runs,
            lambda c=connections: socket_sweep(server.url, [largest] * len(same), c),
            lambda c=connections: socket_sweep(nginx.url, [f"/nar/{name}"] * len(same), c))
        result[f"same_file_c{connections}"] = {"nixfarm": xs, "nginx": ys}
        # The same sweep with curl, whose 16 KiB reads make it the bottleneck: shown
        # so the numbers can be compared with what a curl-based client (Nix) sees.
        xs, ys = _interleaved(
            1,
            lambda c=connections: curl_sweep([server.url + u for u in farm_sweep], c, work),
            lambda c=connections: curl_sweep([nginx.url + u for u in nginx_sweep], c, work))
        result[f"closure_curl_c{connections}"] = {"nixfarm": xs, "nginx": ys}

    farm_narinfos = [f"/cache/{CACHE}/{_hash_of(p)}.narinfo" for p in closure]
    nginx_narinfos = [f"/{_hash_of(p)}.narinfo" for p in closure]
    for connections in (1, 4):
        xs, ys = _interleaved(
            runs,
            lambda c=connections: wrk(server.url, farm_narinfos, c, seconds, work),
            lambda c=connections: wrk(nginx.url, nginx_narinfos, c, seconds, work))
        result[f"narinfo_c{connections}"] = {"nixfarm": xs, "nginx": ys}
    return result


def memory_phase(server: RunningFarm, closure_path: str, work: Path) -> dict[str, Any]:
    closure = closure_of(closure_path)
    idle = group_rss_mib(group_of(server))
    with RssSampler(group_of(server)) as ingest:
        push = timed_cli(server, "push", "--cache", CACHE, closure_path)
    urls, total = _nixfarm_nars(server, closure)
    with RssSampler(group_of(server)) as serve:
        sweep = curl_sweep([server.url + u for u in urls], 4, work)
    return {"idle_before_mib": round(idle, 1), "push_s": push, "ingest": ingest.summary(),
            "serve": serve.summary(), "serve_sweep": sweep, "file_bytes": total}


def _sweep_rate(xs: list[Sweep]) -> float:
    return float(_median_by(xs, lambda s: s.mib_per_s).mib_per_s)


def rows(up: dict[str, Any], serve: dict[str, Any], mem: dict[str, Any] | None,
         size_mb: int, mem_mb: int) -> list[Row]:
    out: list[Row] = []
    push, copy = up["nixfarm_push_s"], up["nix_copy_xz_s"]
    out.append(Row(f"upload {size_mb} MiB closure", "s", push, copy, "nix copy file://, xz",
                   "<= 1.5x", push <= 1.5 * copy))
    out.append(Row(f"upload {size_mb} MiB closure", "s", push, up["nix_copy_zstd_s"],
                   "nix copy file://, zstd", "(info)"))
    for c in (1, 4):
        pair = serve[f"closure_c{c}"]
        a, b = _sweep_rate(pair["nixfarm"]), _sweep_rate(pair["nginx"])
        out.append(Row(f"all NARs, {c} conn", "MiB/s", a, b, "nginx", ">= 0.8x",
                       a >= 0.8 * b))
    for c in (1, 4):
        pair = serve[f"same_file_c{c}"]
        a, b = _sweep_rate(pair["nixfarm"]), _sweep_rate(pair["nginx"])
        out.append(Row(f"same NAR file, {c} conn", "MiB/s", a, b, "nginx", ">= 0.8x",
                       a >= 0.8 * b))
    for c in (1, 4):
        pair = serve[f"closure_curl_c{c}"]
        a, b = _sweep_rate(pair["nixfarm"]), _sweep_rate(pair["nginx"])
        out.append(Row(f"all NARs, {c} conn, curl client", "MiB/s", a, b, "nginx", "(info)"))
    for c in (1, 4):
        pair = serve[f"narinfo_c{c}"]
        a = _median_by(pair["nixfarm"], lambda r: r.p50_us).p50_us
        b = _median_by(pair["nginx"], lambda r: r.p50_us).p50_us
        goal = "<= 2x" if c == 1 else "(info)"
        out.append(Row(f"narinfo median latency, {c} conn", "us", a, b, "nginx", goal,
                       a <= 2 * b if c == 1 else None))
        ra = _median_by(pair["nixfarm"], lambda r: r.requests_per_s).requests_per_s
        rb = _median_by(pair["nginx"], lambda r: r.requests_per_s).requests_per_s
        out.append(Row(f"narinfo requests/s, {c} conn", "req/s", ra, rb, "nginx", "(info)"))
    out.append(Row(f"server RSS peak, push {size_mb} MiB", "MiB", up["push_rss"]["peak_mib"],
                   None, "", f"< {MEMORY_GOAL_MIB}",
                   up["push_rss"]["peak_mib"] < MEMORY_GOAL_MIB))
    if mem is not None:
        for phase in ("ingest", "serve"):
            peak = mem[phase]["peak_mib"]
            out.append(Row(f"server RSS peak, {phase} {mem_mb} MiB", "MiB", peak, None, "",
                           f"< {MEMORY_GOAL_MIB}", peak < MEMORY_GOAL_MIB))
    return out


def _delete_store_paths(seed: str) -> None:
    """Free what this run built: its outputs, build-only paths and derivations all carry
    its seed, which is unique to the run, so nobody else can be using them."""
    mark = f"-bench-s{seed}"
    ours = [f"/nix/store/{n}" for n in os.listdir("/nix/store") if mark in n]
    if ours:
        subprocess.run(["nix-store", "--delete", *ours], capture_output=True, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--count", type=int, default=30, help="store paths per closure")
    parser.add_argument("--memory-size-mb", type=int, default=1024,
                        help="closure size for the memory measurement (0 skips it)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions per measurement")
    parser.add_argument("--seconds", type=float, default=5, help="duration of each wrk run")
    parser.add_argument("--sweep-mb", type=int, default=1200,
                        help="bytes moved per throughput measurement (closure repeated)")
    args = parser.parse_args()
    # Stop cleanly (servers, temp dir, store paths) on SIGTERM, and on SIGINT even when
    # started in the background, where the shell sets SIGINT to be ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    seed = f"{int(time.time())}-{os.getpid()}"
    info = machine()
    print(f"machine: {info}", file=sys.stderr)
    with temp_dir("nixfarm-cache-bench-") as work:
        env = nix_env(work)
        try:
            def log(msg: str) -> None:
                print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

            log(f"building {args.size_mb} MiB closure (seed {seed})")
            small, small_build = build_bench_closure(args.size_mb, args.count, seed,
                                                     work / "result-small", env)
            closure = closure_of(small)
            big = None
            if args.memory_size_mb:
                log(f"building {args.memory_size_mb} MiB closure")
                big, _ = build_bench_closure(args.memory_size_mb, args.count, seed + "-mem",
                                             work / "result-big", env)
            with nixfarm_up(work / "farm") as server:
                log("upload: nix copy (xz, zstd), nixfarm push")
                up, xz_root = upload_phase(small, work, env, server)
                nginx = Nginx(xz_root, work / "nginx")
                with nginx.running():
                    log("serving: NAR throughput and narinfo latency")
                    serve = serve_phase(server, nginx, closure, xz_root, work, args.runs,
                                        args.seconds, args.sweep_mb * 2**20)
                mem = None
                if big is not None:
                    log(f"memory: ingesting and serving {args.memory_size_mb} MiB")
                    mem = memory_phase(server, big, work)
        finally:
            for link in ("result-small", "result-big"):
                (work / link).unlink(missing_ok=True)
            _delete_store_paths(seed)
    result_rows = rows(up, serve, mem, args.size_mb, args.memory_size_mb)
    closure_mib = serve["nixfarm_closure_file_bytes"] / 2**20
    print(f"\nclosure: {len(closure)} paths, {closure_mib:.0f} MiB as stored by nixfarm "
          f"(built in {small_build:.1f} s); {info['nproc']} CPUs, {info['cpu']}")
    print(table(result_rows))
    path = write_json("cache_bench", {
        "machine": info, "args": vars(args), "seed": seed, "closure_paths": len(closure),
        "rows": [{**r.__dict__, "ratio": r.ratio} for r in result_rows],
        "upload": up, "serve": serve, "memory": mem,
    })
    print(f"\nJSON: {path}")
    return 0 if all(r.passed is not False for r in result_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
