"""narinfo parsing and rendering against files written by the real ``nix copy``."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from nixfarm.errors import InvalidInput
from nixfarm.nix.hashes import parse_hash
from nixfarm.nix.narinfo import NarInfo
from nixfarm.nix.signing import PublicKey
from nixfarm.nix.storepath import StorePath
from tests.nix.conftest import FIXTURES, NIX_COMMAND, nix

TOP = (FIXTURES / "probe-top.narinfo").read_text()
BUSYBOX = (FIXTURES / "busybox-ca.narinfo").read_text()


def test_parses_a_narinfo_with_references_and_deriver() -> None:
    info = NarInfo.parse(TOP)
    assert info.store_path == StorePath.parse("2xzsyqgwc9qq7f5hjnxgyyz8771dw581-probe-top")
    assert info.url == "nar/1v7zmw43r5b9q0mpa0gsgvxaf2wy8bxh6hjsirkifhqqsr1h96qb.nar.xz"
    assert info.compression == "xz"
    assert info.file_hash == "sha256:1v7zmw43r5b9q0mpa0gsgvxaf2wy8bxh6hjsirkifhqqsr1h96qb"
    assert info.file_size == 2292
    assert info.nar_hash == "sha256:15rl3hy8x0f0f0nn8jcf13zkxd1n19qpl3f05fqgx6s8sfm3370n"
    assert info.nar_size == 26344
    assert info.references == [
        "0rv34kkm10jfcfb83vnzxqnnxb6v52w9-probe-dep",
        "ap5lw0pk87zllpr8psdiqgxx50yqpp1h-busybox",
    ]
    assert info.deriver == "n2825l3b3n0rw6xyh5x3c8cakgjzfql9-probe-top.drv"
    assert len(info.sigs) == 1 and info.sigs[0].startswith("nixfarm-test-1:")
    assert info.ca is None and info.system is None


def test_parses_a_content_addressed_narinfo() -> None:
    info = NarInfo.parse(BUSYBOX)
    assert info.references == []
    assert info.deriver is None
    assert info.ca == "fixed:r:sha256:0m54h46i7lwk20d2vihhq0fq7ns5ypg44viy8bxxnfqpz3y9a10x"


@pytest.mark.parametrize("text", [TOP, BUSYBOX])
def test_renders_byte_for_byte(text: str) -> None:
    assert NarInfo.parse(text).render() == text


def test_empty_references_keep_their_trailing_space() -> None:
    assert "\nReferences: \n" in NarInfo.parse(BUSYBOX).render()


@pytest.mark.parametrize("text", [TOP, BUSYBOX])
def test_fingerprint_is_what_the_signature_covers(text: str) -> None:
    info = NarInfo.parse(text)
    key = PublicKey.parse((FIXTURES / "nixfarm-test-1.pub").read_text())
    assert key.verify(info.fingerprint(), info.sigs[0])
    assert info.fingerprint().startswith(b"1;/nix/store/")


def test_fingerprint_layout() -> None:
    info = NarInfo.parse(TOP)
    assert info.fingerprint() == (
        b"1;/nix/store/2xzsyqgwc9qq7f5hjnxgyyz8771dw581-probe-top;"
        b"sha256:15rl3hy8x0f0f0nn8jcf13zkxd1n19qpl3f05fqgx6s8sfm3370n;26344;"
        b"/nix/store/0rv34kkm10jfcfb83vnzxqnnxb6v52w9-probe-dep,"
        b"/nix/store/ap5lw0pk87zllpr8psdiqgxx50yqpp1h-busybox"
    )
    info.references.reverse()  # order in the object must not change what is signed
    assert info.fingerprint().endswith(
        b"probe-dep,/nix/store/ap5lw0pk87zllpr8psdiqgxx50yqpp1h-busybox"
    )


def test_tolerates_unknown_keys_and_defaults() -> None:
    text = TOP.replace("Compression: xz\n", "").replace("FileSize: 2292\n", "")
    text += "Future: something\nDeriver2: x\n"
    info = NarInfo.parse(text)
    assert info.compression == "bzip2"  # Nix's default when the key is missing
    assert info.file_size is None
    assert "FileSize" not in info.render()


def test_normalises_hashes() -> None:
    digest = parse_hash("sha256:15rl3hy8x0f0f0nn8jcf13zkxd1n19qpl3f05fqgx6s8sfm3370n")
    sri = "sha256-" + base64.b64encode(digest).decode()
    info = NarInfo.parse(
        TOP.replace("sha256:15rl3hy8x0f0f0nn8jcf13zkxd1n19qpl3f05fqgx6s8sfm3370n", sri)
    )
    assert info.nar_hash == "sha256:15rl3hy8x0f0f0nn8jcf13zkxd1n19qpl3f05fqgx6s8sfm3370n"
    assert info.render() == TOP


def test_reads_nixs_quirks() -> None:
    text = BUSYBOX.replace("References: \n", "References:\n") + "Deriver: unknown-deriver\n"
    info = NarInfo.parse(text)
    assert info.references == [] and info.deriver is None


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("StorePath: /nix/store/2xzsyqgwc9qq7f5hjnxgyyz8771dw581-probe-top\n", "", "StorePath"),
        ("/nix/store/2xzsyqgwc9qq7f5hjnxgyyz8771dw581-probe-top", "/tmp/x", "StorePath"),
        ("StorePath: /nix/store/", "StorePath: ", "StorePath"),
        ("URL: nar/", "URL2: nar/", "URL"),
        ("NarHash: sha256:", "NarHash: md5:", "NarHash"),
        ("NarSize: 26344", "NarSize: 0", "NarSize"),
        ("NarSize: 26344", "NarSize: -5", "NarSize"),
        ("NarSize: 26344", "NarSize: lots", "NarSize"),
        ("FileSize: 2292", "FileSize: 2.5", "FileSize"),
        ("FileHash: sha256:1v7", "FileHash: sha256:xxx", "FileHash"),
        ("References: 0rv", "References: /nix/store/0rv", "References"),
        ("References: 0rv", "References: ../0rv", "References"),
        ("Deriver: n28", "Deriver: ../n28", "Deriver"),
        ("URL: nar/", "URL: a\nURL: nar/", "URL"),
        ("URL: nar/", "URL: n ar/", "URL"),
        ("Compression: xz", "Compression: x z", "Compression"),
        ("-probe-top.drv", "-probe-top", "Deriver"),
        ("\nSig: ", "\nSig: nokey\nSig: ", "Sig"),
        ("\nSig: ", "\nSig: k:c2ln\nSig: ", "Sig"),
        ("\nSig: ", "\nSig: k:***\nSig: ", "Sig"),
        ("\nSig: ", "\nCA: fixed:r:sha256:xyz\nSig: ", "CA"),
        ("\nSig: ", "\nCA: fixed:r:sha256\nSig: ", "CA"),
        ("\nSig: ", "\nCA: text:sha1:" + "0" * 40 + "\nSig: ", "CA"),
        ("\nSig: ", "\nCA: nar:sha256:" + "0" * 52 + "\nSig: ", "CA"),
    ],
)
def test_names_the_bad_key(old: str, new: str, key: str) -> None:
    assert old in TOP
    with pytest.raises(InvalidInput) as caught:
        NarInfo.parse(TOP.replace(old, new, 1))
    assert caught.value.field == key
    assert key in caught.value.message


@pytest.mark.parametrize("ca", [
    "fixed:r:sha256:15rl3hy8x0f0f0nn8jcf13zkxd1n19qpl3f05fqgx6s8sfm3370n",
    "fixed:sha256:15rl3hy8x0f0f0nn8jcf13zkxd1n19qpl3f05fqgx6s8sfm3370n",
    "text:sha256:15rl3hy8x0f0f0nn8jcf13zkxd1n19qpl3f05fqgx6s8sfm3370n",
    "fixed:sha1:" + "ab" * 20,
    "fixed:r:sha512:" + "A" * 86 + "==",
])
def test_accepts_the_content_addresses_nix_writes(ca: str) -> None:
    info = NarInfo.parse(TOP + f"CA: {ca}\n")
    assert info.ca == ca and info.render().endswith(f"CA: {ca}\n")


def test_rejects_garbage_lines() -> None:
    with pytest.raises(InvalidInput, match="line 3"):
        NarInfo.parse(TOP.replace("Compression: xz", "Compression xz"))


def test_round_trips_everything_a_fresh_nix_copy_writes(probe_top: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    nix("nix", *NIX_COMMAND, "copy", "--to", f"file://{cache}?compression=none", probe_top)
    narinfos = sorted(cache.glob("*.narinfo"))
    assert len(narinfos) == 3
    for path in narinfos:
        text = path.read_text()
        info = NarInfo.parse(text)
        assert info.render() == text
        assert info.store_path.hash_part == path.stem
        assert (cache / info.url).stat().st_size == info.file_size
