"""A job image's closure survives garbage collection for as long as its root exists.

The scenario collects garbage, so it runs in a private Nix store
(tests/fixtures/privatenix.py), builds the demo package there, and reports JSON for
the test to check.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import anyio

from nixfarm import demo
from nixfarm.runner.nixroot import compose_nix_root
from tests.fixtures.privatenix import collect_garbage, existing, run_scenario

OPTIONS = {"substituters": "", "sandbox": "true"}


def _output_of(program: Path) -> str:
    return subprocess.run([str(program)], capture_output=True, text=True).stdout


async def scenario(cache_dir: Path) -> dict[str, object]:
    built = await compose_nix_root(demo.path(), ["hello"], cache_dir, nix_options=OPTIONS)
    report: dict[str, object] = {"closure": list(built.store_paths)}
    collect_garbage()
    report["missing_after_gc"] = sorted(set(built.store_paths) - set(existing(built.store_paths)))
    report["hello_runs"] = _output_of(built.root / "bin" / "hello")
    report["build_roots_left"] = sorted(str(p) for p in (cache_dir / "gcroots").glob("*/*"))
    again = await compose_nix_root(demo.path(), ["hello"], cache_dir, nix_options=OPTIONS)
    report["same_root"] = again.root == built.root
    # Deleting the cached root (and its roots beside it) releases the closure.
    shutil.rmtree(built.root)
    shutil.rmtree(built.root.with_name(built.root.name + ".roots"))
    collect_garbage()
    report["left_after_release"] = existing(built.store_paths)
    return report


def test_a_cached_job_root_keeps_its_closure_through_garbage_collection(
        tmp_path: Path) -> None:
    report = run_scenario("tests.runner.test_gcroots", tmp_path / "images", tmp_path)
    assert any(p.endswith("-hello-2.12") for p in report["closure"])
    assert any(p.endswith("-busybox") for p in report["closure"])
    assert report["missing_after_gc"] == []
    assert "Hello, world!" in report["hello_runs"]
    assert report["build_roots_left"] == []  # nix-build's own out-links are gone
    assert report["same_root"] is True
    assert report["left_after_release"] == []  # nothing else kept the closure


if __name__ == "__main__":
    print(json.dumps(anyio.run(scenario, Path(sys.argv[1]))))
