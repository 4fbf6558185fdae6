"""A job image's closure survives garbage collection for as long as its root exists.

Like tests/registry/test_gcroots.py, the scenario collects garbage, so it runs under
bubblewrap with an empty directory over ``/nix`` (a private store; Debian's nix lives in
/usr), builds the demo package there, and reports JSON for the test to check.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio

from nixfarm import demo
from nixfarm.runner.rootfs import compose_nix_root

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = {"substituters": "", "sandbox": "true"}


def _gc() -> None:
    subprocess.run(["nix-store", "--gc"], check=True, capture_output=True, timeout=120)


def _existing(paths: tuple[str, ...]) -> list[str]:
    return [p for p in paths if os.path.exists(p)]


def _output_of(program: Path) -> str:
    return subprocess.run([str(program)], capture_output=True, text=True).stdout


async def scenario(cache_dir: Path) -> dict[str, object]:
    built = await compose_nix_root(demo.path(), ["hello"], cache_dir, nix_options=OPTIONS)
    report: dict[str, object] = {"closure": list(built.store_paths)}
    _gc()
    report["missing_after_gc"] = sorted(set(built.store_paths) - set(_existing(built.store_paths)))
    report["hello_runs"] = _output_of(built.root / "bin" / "hello")
    report["build_roots_left"] = sorted(str(p) for p in (cache_dir / "gcroots").glob("*/*"))
    again = await compose_nix_root(demo.path(), ["hello"], cache_dir, nix_options=OPTIONS)
    report["same_root"] = again.root == built.root
    # Deleting the cached root (and its roots beside it) releases the closure.
    shutil.rmtree(built.root)
    shutil.rmtree(built.root.with_name(built.root.name + ".roots"))
    _gc()
    report["left_after_release"] = _existing(built.store_paths)
    return report


def test_a_cached_job_root_keeps_its_closure_through_garbage_collection(
        tmp_path: Path) -> None:
    private_nix = tmp_path / "nix"
    private_nix.mkdir()
    done = subprocess.run(
        ["bwrap", "--dev-bind", "/", "/", "--bind", str(private_nix), "/nix",
         "--chdir", str(ROOT), "--die-with-parent",
         sys.executable, "-m", "tests.runner.test_gcroots", str(tmp_path / "images")],
        capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert any(p.endswith("-hello-2.12") for p in report["closure"])
    assert any(p.endswith("-busybox") for p in report["closure"])
    assert report["missing_after_gc"] == []
    assert "Hello, world!" in report["hello_runs"]
    assert report["build_roots_left"] == []  # nix-build's own out-links are gone
    assert report["same_root"] is True
    assert report["left_after_release"] == []  # nothing else kept the closure


if __name__ == "__main__":
    print(json.dumps(anyio.run(scenario, Path(sys.argv[1]))))
