"""Whole images from nixfarm's layers and manifests, read by skopeo and run by podman.

The image holds Debian's static busybox as a store path plus a customisation layer
linking ``/bin/sh`` to it: the smallest image that runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from nixfarm.oci.digest import Digest
from nixfarm.oci.layer import write_customisation_layer, write_layer
from nixfarm.oci.manifest import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    Compression,
    LayerInfo,
    RuntimeConfig,
    image_config,
    image_manifest,
)

BUSYBOX = Path("/bin/busybox")
pytestmark = pytest.mark.skipif(
    not (BUSYBOX.exists() and shutil.which("skopeo") and shutil.which("podman")),
    reason="needs busybox-static, skopeo and podman (scripts/setup installs them)",
)


def build_image(
    tmp: Path, compression: Compression
) -> tuple[bytes, list[LayerInfo], dict[Digest, bytes]]:
    """Return the config, the layers bottom first, and every blob by digest."""
    busybox = tmp / "store" / ("0" * 32 + "-busybox")
    (busybox / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, busybox / "bin" / "busybox")
    target = f"/nix/store/{busybox.name}/bin/busybox"
    blobs: dict[Digest, bytes] = {}
    layers: list[LayerInfo] = []
    writers: list[Callable[[Callable[[bytes], object]], LayerInfo]] = [
        lambda sink: write_layer([busybox], sink, compression=compression),
        lambda sink: write_customisation_layer(
            {f"/bin/{applet}": target for applet in ("sh", "echo", "cat", "ls")},
            {"/etc/passwd": (b"root:x:0:0::/root:/bin/sh\n", 0o644)},
            {"/tmp": 0o1777},
            sink,
            compression=compression,
        ),
    ]
    for write in writers:
        chunks: list[bytes] = []
        info = write(chunks.append)
        blobs[info.digest] = b"".join(chunks)
        layers.append(info)
    config = image_config(layers, RuntimeConfig(env=("PATH=/bin",), cmd=("/bin/sh",)))
    blobs[Digest.of(config)] = config
    return config, layers, blobs


def oci_layout(tmp: Path, compression: Compression) -> tuple[Path, bytes]:
    config, layers, blobs = build_image(tmp, compression)
    manifest = image_manifest(config, layers, OCI_MANIFEST)
    layout = tmp / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    for digest, data in (blobs | {Digest.of(manifest): manifest}).items():
        (layout / "blobs" / "sha256" / digest.hex).write_bytes(data)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": str(Digest.of(manifest)),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return layout, manifest


def skopeo_inspect(reference: str) -> dict[str, object]:
    out = subprocess.run(
        ["skopeo", "inspect", reference], capture_output=True, check=True, text=True
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_skopeo_reads_and_verifies_an_oci_image(tmp_path: Path, compression: Compression) -> None:
    layout, manifest = oci_layout(tmp_path, compression)
    info = skopeo_inspect(f"oci:{layout}:latest")
    assert info["Digest"] == str(Digest.of(manifest))
    assert info["Architecture"] == "amd64"
    assert info["Env"] == ["PATH=/bin"]
    assert info["Layers"] == [layer["digest"] for layer in json.loads(manifest)["layers"]]
    # Copying reads every blob and checks it against its digest.
    subprocess.run(
        ["skopeo", "copy", "-q", f"oci:{layout}:latest", f"dir:{tmp_path / 'copy'}"],
        check=True,
    )


def test_skopeo_converts_a_docker_schema2_image(tmp_path: Path) -> None:
    config, layers, blobs = build_image(tmp_path, "gzip")
    manifest = image_manifest(config, layers, DOCKER_MANIFEST)
    source = tmp_path / "docker"
    source.mkdir()
    (source / "version").write_text("Directory Transport Version: 1.1\n")
    (source / "manifest.json").write_bytes(manifest)
    for digest, data in blobs.items():
        (source / digest.hex).write_bytes(data)
    info = skopeo_inspect(f"dir:{source}")
    assert info["Layers"] == [str(layer.digest) for layer in layers]
    # Conversion to OCI decompresses nothing but checks every digest on the way.
    subprocess.run(
        ["skopeo", "copy", "-q", f"dir:{source}", f"oci:{tmp_path / 'oci'}:latest"], check=True
    )


def test_podman_runs_the_image(tmp_path: Path) -> None:
    layout, _ = oci_layout(tmp_path, "gzip")
    # podman refuses a runroot longer than 50 characters, so it cannot live in tmp_path.
    runroot = Path(tempfile.mkdtemp(prefix="nf-podman-", dir="/tmp"))
    podman = [
        "podman",
        "--root",
        str(tmp_path / "podman-root"),
        "--runroot",
        str(runroot),
        "--storage-driver",
        "vfs",
    ]
    run = [
        "run",
        "--rm",
        "--runtime",
        "runc",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        f"oci:{layout}:latest",
        "/bin/sh",
        "-c",
        "echo hello; cat /etc/passwd; ls -ld /tmp",
    ]
    try:
        result = subprocess.run(
            podman + run, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[:2] == ["hello", "root:x:0:0::/root:/bin/sh"]
        assert lines[2].startswith("drwxrwxrwt")
    finally:
        subprocess.run([*podman, "system", "reset", "--force"], capture_output=True, check=False)
        shutil.rmtree(runroot, ignore_errors=True)
