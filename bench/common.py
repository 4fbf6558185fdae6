"""What nixfarm's benchmarks share: servers to run, clients to measure, a results table.

Every process started here runs in its own session and is stopped by its process
group id when the context manager exits, so an interrupted benchmark leaves nothing
behind. The measuring clients are C programs (curl, wrk): a Python HTTP client would
be slower than the servers it measures and would make every ratio look like 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.farm import RunningFarm, free_port

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".venv" / "bin"
NIXFARM = str(BIN / "nixfarm")
DEMO = REPO / "nixfarm" / "demo"
OUT = REPO / "bench" / "out"
NIX = ["--extra-experimental-features", "nix-command"]


# -- the machine ----------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """What a result was measured on: enough to compare runs across machines."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "ram_gib": round(mem_kb / 2**20, 1),
        "cpu": cpu,
        "kernel": platform.release(),
        "load_avg_at_start": os.getloadavg(),
    }


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        # Nix makes store copies read-only; make them writable so rmtree can go.
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def timed(cmd: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Run ``cmd`` to completion (raising on failure); its wall time in seconds."""
    start = time.perf_counter()
    result = subprocess.run(list(cmd), env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n"
                           f"{result.stderr.decode(errors='replace')[-3000:]}")
    return elapsed


def nix_env(home: Path) -> dict[str, str]:
    """Nix's narinfo disk cache lives under XDG_CACHE_HOME: keep ours private."""
    return {**os.environ, "XDG_CACHE_HOME": str(home / "xdg-cache")}


def build_bench_closure(total_mb: int, count: int, seed: str, out_link: Path,
                        env: dict[str, str]) -> tuple[str, float]:
    """Build ``bench.nix`` (fresh seed: nothing cached); (store path, seconds)."""
    cmd = ["nix-build", str(DEMO / "bench.nix"), "--arg", "totalMB", str(total_mb),
           "--arg", "count", str(count), "--argstr", "seed", seed,
           "--option", "sandbox", "true", "--option", "substituters", "", "-j2",
           "--out-link", str(out_link)]
    seconds = timed(cmd, env)
    return os.path.realpath(out_link), seconds


def closure_of(path: str) -> list[str]:
    out = subprocess.run(["nix-store", "-qR", path], check=True, capture_output=True,
                         text=True).stdout
    return out.split()


# -- servers ----------------------------------------------------------------------------

def _stop_group(process: subprocess.Popen[bytes], grace: float = 20) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 30
               ) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text(errors='replace')}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not answer {url} in {seconds} s")


@contextlib.contextmanager
def nixfarm_up(data_dir: Path, *args: str, env: Mapping[str, str] | None = None
               ) -> Iterator[RunningFarm]:
    """A real ``nixfarm up`` (Granian, nginx, SQLite, filesystem store) in its own
    session: the tests' ``RunningFarm``, started with ``args`` and the extra ``env``, and
    stopped (its whole process group) however the benchmark ends."""
    farm = RunningFarm(data_dir, free_port(), extra_env=dict(env or {}))
    farm.start(*args)
    try:
        yield farm
    finally:
        farm.stop()


def timed_cli(farm: RunningFarm, *args: str) -> float:
    """Run a ``nixfarm`` command against ``farm``; its wall time."""
    env = {**os.environ, "NIXFARM_URL": farm.url, "NIXFARM_TOKEN": farm.token}
    return timed([NIXFARM, *args], env)


def group_of(farm: RunningFarm) -> int:
    """The process group of ``farm`` (its supervisor, worker and nginx)."""
    assert farm.process is not None
    return farm.process.pid


_NGINX_CONF = """\
{user}worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    types {{ text/x-nix-narinfo narinfo; text/plain txt; text/html html; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


@dataclass
class Nginx:
    """Debian's nginx serving ``root`` as static files: what a file:// cache behind a
    plain web server looks like, the usual self-hosted baseline."""

    root: Path
    prefix: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextlib.contextmanager
    def running(self) -> Iterator[Nginx]:
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        # As root, nginx's worker would switch to "nobody", which cannot read a 0700 temp dir.
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf.write_text(_NGINX_CONF.format(user=user, prefix=self.prefix, port=self.port,
                                           root=self.root))
        log = self.prefix / "stderr.log"
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                ["nginx", "-c", str(conf), "-p", str(self.prefix), "-g", "daemon off;"],
                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_http(f"{self.url}/nix-cache-info", self.process, log)
            yield self
        finally:
            _stop_group(self.process, grace=10)


# -- memory -----------------------------------------------------------------------------

def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): state ppid pgrp ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples the summed VmRSS of a process group every ``interval`` seconds.

    The sum double-counts pages shared between Granian's main process and its worker,
    so it overstates the footprint a little: the safe direction for a memory goal.
    """

    def __init__(self, pgid: int, interval: float = 0.05) -> None:
        self.pgid = pgid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.peak_by_pid: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        pids = _group_pids(self.pgid)
        tick = 0
        while not self._stop.is_set():
            if tick % 20 == 0:  # the group rarely changes: rescan /proc once a second
                pids = _group_pids(self.pgid)
            total = 0
            for pid in pids:
                kb = _rss_kb(pid)
                total += kb
                self.peak_by_pid[pid] = max(self.peak_by_pid.get(pid, 0), kb)
            self.samples.append((time.monotonic() - start, total))
            tick += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return max((kb for _, kb in self.samples), default=0) / 1024

    def summary(self) -> dict[str, Any]:
        return {
            "peak_mib": round(self.peak_mib, 1),
            "first_mib": round(self.samples[0][1] / 1024, 1) if self.samples else 0,
            "last_mib": round(self.samples[-1][1] / 1024, 1) if self.samples else 0,
            "samples": len(self.samples),
            "peak_by_pid_mib": {str(p): round(kb / 1024, 1) for p, kb in self.peak_by_pid.items()},
        }


def group_rss_mib(pgid: int) -> float:
    return sum(_rss_kb(p) for p in _group_pids(pgid)) / 1024


# -- clients ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Sweep:
    """Downloading a list of URLs with curl: how many bytes, how long."""

    bytes: int
    seconds: float

    @property
    def mib_per_s(self) -> float:
        return self.bytes / self.seconds / 2**20


def curl_sweep(urls: Sequence[str], connections: int, work_dir: Path) -> Sweep:
    """GET every URL (bodies to /dev/null) over ``connections`` kept-alive connections.

    One curl process for the whole list, so its start-up is paid once; every answer
    must be a 200 and the byte count is what curl really received.
    """
    config = work_dir / f"curl-{connections}.conf"
    config.write_text("".join(f'url = "{u}"\noutput = "/dev/null"\n' for u in urls))
    cmd = ["curl", "--silent", "--show-error", "--no-progress-meter", "-K", str(config),
           "-w", "%{http_code} %{size_download}\\n"]
    if connections > 1:
        cmd += ["--parallel", "--parallel-max", str(connections), "--parallel-immediate"]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"curl failed: {result.stderr[-2000:]}")
    total = 0
    for line in result.stdout.split("\n"):
        if not line:
            continue
        code, size = line.split()
        if code != "200":
            raise RuntimeError(f"curl got HTTP {code} during a sweep")
        total += int(size)
    return Sweep(total, seconds)


def _fetch_all(host: str, port: int, paths: list[str], lock: threading.Lock,
               totals: list[int]) -> None:
    """One kept-alive connection GETting paths off the shared list until it is empty."""
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with socket.create_connection((host, port)) as sock:
        while True:
            with lock:
                if not paths:
                    return
                path = paths.pop()
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError(f"connection closed in the headers of {path}")
                head += chunk
            header, _, rest = head.partition(b"\r\n\r\n")
            lines = header.decode("latin-1").split("\r\n")
            if lines[0].split()[1] != "200":
                raise RuntimeError(f"GET {path}: {lines[0]}")
            length = next(int(line.split(":", 1)[1]) for line in lines[1:]
                          if line.lower().startswith("content-length:"))
            remaining = length - len(rest)
            while remaining > 0:
                n = sock.recv_into(view, min(remaining, len(buffer)))
                if n == 0:
                    raise RuntimeError(f"connection closed in the body of {path}")
                remaining -= n
            with lock:
                totals.append(length)


def socket_sweep(base: str, paths: Sequence[str], connections: int) -> Sweep:
    """GET every path over ``connections`` kept-alive connections, bodies discarded.

    A client that is not the bottleneck: curl and wrk read 16 KiB and 8 KiB a call and
    top out near 500 MiB/s here, below what both servers can send; this reads a MiB a
    call (one thread per connection; the GIL is released while receiving).
    """
    host, port = base.removeprefix("http://").rsplit(":", 1)
    todo, lock = list(reversed(paths)), threading.Lock()
    totals: list[int] = []
    threads = [threading.Thread(target=_fetch_all, args=(host, int(port), todo, lock, totals))
               for _ in range(connections)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if len(totals) != len(paths):  # a thread failed (its traceback is on stderr)
        raise RuntimeError(f"socket sweep fetched {len(totals)} of {len(paths)} files")
    return Sweep(sum(totals), seconds)


_WRK_SCRIPT = """\
local paths = {%s}
local headers = %s
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i], headers)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%%d,"bytes":%%d,"duration_us":%%d,"errors":%%d,' ..
    '"p50_us":%%.1f,"p90_us":%%.1f,"p99_us":%%.1f,"mean_us":%%.1f}\\n',
    summary.requests, summary.bytes, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    bytes: int
    seconds: float
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float

    @property
    def mib_per_s(self) -> float:
        return self.bytes / self.seconds / 2**20

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds


def wrk(base: str, paths: Sequence[str], connections: int, seconds: float, work_dir: Path,
        headers: Mapping[str, str] | None = None) -> WrkResult:
    """Run wrk against ``base`` cycling through ``paths`` (sending ``headers``); raises
    on any error answer."""
    script = work_dir / "wrk.lua"
    table = "{" + ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}"
                            for k, v in (headers or {}).items()) + "}"
    script.write_text(_WRK_SCRIPT % (", ".join(json.dumps(p) for p in paths), table))
    threads = min(connections, os.cpu_count() or 1)
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
           "--timeout", "10s", "-s", str(script), base]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in result.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed:\n{result.stdout}\n{result.stderr}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    if data["errors"]:
        raise RuntimeError(f"wrk saw {data['errors']} errors:\n{result.stdout}")
    return WrkResult(data["requests"], data["bytes"], data["duration_us"] / 1e6,
                     data["p50_us"], data["p90_us"], data["p99_us"], data["mean_us"])


# -- reporting ----------------------------------------------------------------------------

@dataclass
class Row:
    """One comparison: nixfarm against a baseline, and the goal on their ratio."""

    name: str
    unit: str
    nixfarm: float
    baseline: float | None
    baseline_name: str
    goal: str = ""
    passed: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        assert self.baseline is not None
        return self.nixfarm / self.baseline


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def table(rows: Sequence[Row]) -> str:
    """A Markdown table: readable in a terminal and pasteable into the docs."""
    head = ["measurement", "nixfarm", "baseline", "ratio", "goal", "result"]
    lines = [head]
    for r in rows:
        result = "" if r.passed is None else ("PASS" if r.passed else "FAIL")
        base = "-" if r.baseline is None else f"{_num(r.baseline)} {r.unit} ({r.baseline_name})"
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        lines.append([r.name, f"{_num(r.nixfarm)} {r.unit}", base, ratio, r.goal, result])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    fmt = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
           for line in lines]
    fmt.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(fmt)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = OUT / f"{name}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(x: Any) -> Any:
    if hasattr(x, "__dataclass_fields__"):
        return asdict(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot serialise {type(x).__name__}")

