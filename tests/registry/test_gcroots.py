"""A garbage collection between nix-build and layer writing deletes nothing the image needs.

The scenario below runs in a private Nix store (tests/fixtures/privatenix.py), where
the demo packages are built from scratch and collected freely. It reports what it saw
as JSON; the test asserts.

Run by hand: ``bwrap --dev-bind / / --bind EMPTY_DIR /nix .venv/bin/python -m
tests.registry.test_gcroots DATA_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from pathlib import Path

import anyio

from nixfarm.oci.manifest import Platform
from nixfarm.registry import names
from nixfarm.registry.compose import Image, compose
from nixfarm.registry.layers import LayerCache, blob_key
from nixfarm.registry.nixbuild import NixBuilder
from nixfarm.registry.service import RegistryService
from nixfarm.registry.sources import PackageSource
from nixfarm.storage.base import ObjectStore
from nixfarm.storage.factory import open_store
from tests.fixtures.privatenix import collect_garbage, existing, run_scenario
from tests.registry.conftest import demo_settings


def _layer_problems(store: ObjectStore, image: Image, closure: list[str]) -> list[str]:
    """What is wrong with the image's store-path layers, compared with the store."""
    problems: list[str] = []
    seen: set[str] = set()
    for layer in image.layers[:-1]:  # the last one is the customisation layer
        local = store.local_path(blob_key(layer.digest))
        assert local is not None
        digest = hashlib.sha256()
        with local.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != layer.digest.hex:
            problems.append(f"{local}: digest differs from {layer.digest}")
        with tarfile.open(local, "r:gz") as tar:
            for member in tar:
                name = "/" + member.name.strip("/").removeprefix("./")
                parts = name.split("/")
                if len(parts) >= 4 and parts[1:3] == ["nix", "store"]:
                    seen.add("/".join(parts[:4]))
                if member.isreg():
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    if extracted.read() != Path(name).read_bytes():
                        problems.append(f"{name}: content differs from the store")
    if seen != set(closure):
        problems.append(f"layers hold {sorted(seen)}, the closure is {sorted(closure)}")
    return problems


async def scenario(data_dir: Path) -> dict[str, object]:
    """Build, collect garbage, write the layers; then the same without roots. In a private /nix."""
    settings = demo_settings(data_dir)
    store = open_store(settings)
    builder = NixBuilder(settings.nix_options, 120, data_dir / "registry-gcroots")
    layers = LayerCache(store, "gzip")
    request = names.parse("hello/tree")
    resolved = await PackageSource(settings.registry.source).resolve("latest")
    report: dict[str, object] = {}

    async with builder.built(request, resolved) as closure:
        paths = sorted(closure.graph)
        report["closure"] = paths
        report["held_during"] = [str(link) for link in builder.roots.held()]
        collect_garbage()
        report["missing_after_gc"] = sorted(set(paths) - set(existing(paths)))
        image = await compose(closure, layers, {}, 94, Platform.for_nix_system(request.system))
        report["layer_problems"] = _layer_problems(store, image, paths)
    report["held_after"] = [str(link) for link in builder.roots.held()]
    collect_garbage()
    report["left_after_second_gc"] = existing(paths)

    # A failure while the roots are held removes them too.
    try:
        async with builder.built(request, resolved):
            raise RuntimeError("composing failed")
    except RuntimeError:
        pass
    report["held_after_failure"] = [str(link) for link in builder.roots.held()]

    # The service builds through the same roots and leaves none behind.
    service = RegistryService(settings, store)
    served = await service.image("hello/tree", "latest")
    report["service_layers"] = len(served.layers)
    report["service_held_after"] = [str(link) for link in service.builder.roots.held()]
    return report


def test_gc_between_build_and_layers_keeps_the_closure_and_roots_go_after(
        tmp_path: Path) -> None:
    report = run_scenario("tests.registry.test_gcroots", tmp_path / "data", tmp_path)

    closure = report["closure"]
    assert any(p.endswith("-hello-2.12") for p in closure)
    assert any(p.endswith("-busybox") for p in closure)  # a dependency, not a root
    assert report["held_during"]  # the out-links of the build
    assert report["missing_after_gc"] == []
    assert report["layer_problems"] == []
    assert report["held_after"] == []
    # Nothing else kept the closure: without the roots, the same collection deletes it.
    assert report["left_after_second_gc"] == []
    assert report["held_after_failure"] == []
    assert report["service_layers"] >= 2
    assert report["service_held_after"] == []


if __name__ == "__main__":
    print(json.dumps(anyio.run(scenario, Path(sys.argv[1]))))
