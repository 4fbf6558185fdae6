from __future__ import annotations

import json

import pytest

from nixfarm.errors import InvalidInput
from nixfarm.oci.digest import Digest
from nixfarm.oci.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    LayerInfo,
    Platform,
    RuntimeConfig,
    canonical_json,
    image_config,
    image_manifest,
    manifest_media_type,
    negotiate,
)

LAYERS = [
    LayerInfo(Digest.of(b"layer-1"), 1234, Digest.of(b"tar-1"), "gzip"),
    LayerInfo(Digest.of(b"layer-2"), 99, Digest.of(b"tar-2"), "gzip"),
]
RUNTIME = RuntimeConfig(
    env=("PATH=/bin:/usr/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt"),
    cmd=("/bin/sh",),
)


def test_canonical_json_is_sorted_compact_ascii() -> None:
    assert canonical_json({"b": 1, "a": [1, "é"]}) == b'{"a":[1,"\\u00e9"],"b":1}'


def test_image_config_lists_diff_ids_bottom_first() -> None:
    config = json.loads(image_config(LAYERS, RUNTIME))
    assert config == {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:01Z",
        "rootfs": {"type": "layers", "diff_ids": [str(layer.diff_id) for layer in LAYERS]},
        "config": {"Env": list(RUNTIME.env), "Cmd": ["/bin/sh"]},
    }


def test_image_config_carries_platform_and_optional_fields() -> None:
    runtime = RuntimeConfig(
        entrypoint=("/bin/hello",), working_dir="/tmp", user="0:0", labels={"a": "b"}
    )
    config = json.loads(image_config(LAYERS, runtime, Platform.for_nix_system("aarch64-linux")))
    assert (config["architecture"], config["os"], config["variant"]) == ("arm64", "linux", "v8")
    assert config["config"] == {
        "Entrypoint": ["/bin/hello"],
        "WorkingDir": "/tmp",
        "User": "0:0",
        "Labels": {"a": "b"},
    }
    with pytest.raises(InvalidInput):
        Platform.for_nix_system("x86_64-darwin")


def test_same_inputs_give_byte_identical_documents() -> None:
    a = image_config(LAYERS, RUNTIME)
    b = image_config(list(LAYERS), RuntimeConfig(env=list(RUNTIME.env), cmd=["/bin/sh"]))
    assert a == b
    for media_type in (DOCKER_MANIFEST, OCI_MANIFEST):
        assert image_manifest(a, LAYERS, media_type) == image_manifest(b, LAYERS, media_type)


@pytest.mark.parametrize(
    ("media_type", "config_type", "layer_type"),
    [
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP),
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP),
    ],
)
def test_manifest_names_config_and_layers(
    media_type: str, config_type: str, layer_type: str
) -> None:
    config = image_config(LAYERS, RUNTIME)
    manifest = image_manifest(config, LAYERS, media_type)
    assert json.loads(manifest) == {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "size": len(config), "digest": str(Digest.of(config))},
        "layers": [
            {"mediaType": layer_type, "size": layer.size, "digest": str(layer.digest)}
            for layer in LAYERS
        ],
    }
    assert manifest_media_type(manifest) == media_type


def test_zstd_layers_need_an_oci_manifest() -> None:
    layers = [LayerInfo(Digest.of(b"z"), 5, Digest.of(b"t"), "zstd")]
    config = image_config(layers, RUNTIME)
    manifest = json.loads(image_manifest(config, layers, OCI_MANIFEST))
    assert manifest["layers"][0]["mediaType"] == OCI_LAYER_ZSTD
    with pytest.raises(InvalidInput):
        image_manifest(config, layers, DOCKER_MANIFEST)
    with pytest.raises(InvalidInput):
        image_manifest(config, layers, "application/json")


@pytest.mark.parametrize("document", [b"not json", b"[]", b'{"mediaType": "text/plain"}'])
def test_manifest_media_type_rejects_other_documents(document: bytes) -> None:
    with pytest.raises(InvalidInput):
        manifest_media_type(document)


DOCKER_CLI = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/json",
    ]
)
# containers/image (skopeo, podman) sends OCI first, as separate headers.
CONTAINERS_IMAGE = ",".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (DOCKER_CLI, DOCKER_MANIFEST),
        (CONTAINERS_IMAGE, DOCKER_MANIFEST),
        ("", DOCKER_MANIFEST),
        ("*/*", DOCKER_MANIFEST),
        ("application/json", DOCKER_MANIFEST),
        ("application/vnd.oci.image.manifest.v1+json", OCI_MANIFEST),
        (
            "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
            OCI_MANIFEST,
        ),
        ("application/vnd.oci.image.manifest.v1+json, */*", OCI_MANIFEST),
        ("application/vnd.oci.image.manifest.v1+json, application/*;q=0.5", OCI_MANIFEST),
        (
            "application/vnd.docker.distribution.manifest.v2+json;q=0.5, "
            "application/vnd.oci.image.manifest.v1+json",
            OCI_MANIFEST,
        ),
        (
            "application/vnd.docker.distribution.manifest.v2+json;q=0, */*",
            OCI_MANIFEST,
        ),
        ("APPLICATION/VND.OCI.IMAGE.MANIFEST.V1+JSON", OCI_MANIFEST),
        ("application/vnd.oci.image.manifest.v1+json;q=bogus", DOCKER_MANIFEST),
    ],
)
def test_negotiate_picks_what_the_client_takes(accept: str, expected: str) -> None:
    assert negotiate(accept) == expected


def test_negotiate_answers_oci_when_only_oci_can_describe_the_image() -> None:
    assert negotiate(DOCKER_CLI, oci_only=True) == OCI_MANIFEST
