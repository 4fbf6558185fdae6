"""Keys and signatures, proven interchangeable with the ones Nix makes and checks."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from nixfarm.errors import InvalidInput
from nixfarm.nix.narinfo import NarInfo, fingerprint
from nixfarm.nix.signing import PublicKey, SecretKey
from tests.nix.conftest import NIX_COMMAND, nix

FINGERPRINT = b"1;/nix/store/2xzsyqgwc9qq7f5hjnxgyyz8771dw581-probe-top;sha256:0;1;"


def nix_keys(tmp_path: Path, name: str) -> tuple[str, str]:
    secret, public = tmp_path / f"{name}.sec", tmp_path / f"{name}.pub"
    nix("nix-store", "--generate-binary-cache-key", name, str(secret), str(public))
    return secret.read_text(), public.read_text()


def test_parses_keys_nix_generates(tmp_path: Path) -> None:
    secret_text, public_text = nix_keys(tmp_path, "cache.example.org-1")
    secret = SecretKey.parse(secret_text)
    assert secret.name == "cache.example.org-1"
    assert secret.to_string() == secret_text
    assert secret.public().to_string() == public_text
    assert PublicKey.parse(public_text) == secret.public()


def test_generated_keys_round_trip() -> None:
    key = SecretKey.generate("farm-1")
    assert SecretKey.parse(key.to_string()) == key
    assert PublicKey.parse(key.public().to_string()) == key.public()
    assert "farm-1" in repr(key) and key.to_string().split(":")[1] not in repr(key)
    sig = key.sign(FINGERPRINT)
    assert sig.startswith("farm-1:") and len(base64.b64decode(sig.split(":")[1])) == 64
    assert key.public().verify(FINGERPRINT, sig)


def test_verify_says_no() -> None:
    key = SecretKey.generate("farm-1")
    sig = key.sign(FINGERPRINT)
    other = SecretKey.generate("farm-1").public()
    renamed = PublicKey("farm-2", key.public().key)
    assert not other.verify(FINGERPRINT, sig)  # same name, different key
    assert not renamed.verify(FINGERPRINT, sig)  # right key, but Nix goes by name
    assert not key.public().verify(FINGERPRINT + b"x", sig)
    assert not key.public().verify(FINGERPRINT, "farm-1:" + base64.b64encode(bytes(64)).decode())
    assert not key.public().verify(FINGERPRINT, "garbage")
    assert not key.public().verify(FINGERPRINT, "farm-1:!!!")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "nokey",
        ":" + base64.b64encode(bytes(64)).decode(),
        "k:" + base64.b64encode(bytes(63)).decode(),
        "k:%%%",
    ],
)
def test_rejects_malformed_secret_keys(text: str) -> None:
    with pytest.raises(InvalidInput):
        SecretKey.parse(text)


def test_rejects_a_secret_key_whose_halves_disagree() -> None:
    key = SecretKey.generate("a")
    other = SecretKey.generate("a")
    with pytest.raises(InvalidInput, match="inconsistent"):
        SecretKey("a", key.key[:32] + other.key[32:])


def test_nix_accepts_a_narinfo_we_signed(probe_top: str, tmp_path: Path) -> None:
    """Copy out of a binary cache into a fresh store that trusts only our key."""
    cache = tmp_path / "cache"
    nix("nix", *NIX_COMMAND, "copy", "--to", f"file://{cache}?compression=none", probe_top)
    key = SecretKey.generate("nixfarm-signing-test-1")
    for path in cache.glob("*.narinfo"):
        info = NarInfo.parse(path.read_text())
        # Only our signature: the local store may carry others from earlier runs.
        info.sigs = [key.sign(info.fingerprint())]
        path.write_text(info.render())

    def copy_into(store: Path, trusted: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nix", *NIX_COMMAND, "copy", "--from", f"file://{cache}", "--to", str(store),
             "--option", "require-sigs", "true", "--option", "trusted-public-keys", trusted,
             probe_top],
            capture_output=True, text=True,
        )  # fmt: skip

    stranger = SecretKey.generate("nixfarm-signing-test-1").public().to_string()
    refused = copy_into(tmp_path / "refused", stranger)
    assert refused.returncode != 0
    assert "lacks a valid signature" in refused.stderr

    accepted = copy_into(tmp_path / "accepted", key.public().to_string())
    assert accepted.returncode == 0, accepted.stderr
    assert (tmp_path / "accepted" / probe_top.lstrip("/") / "bin" / "top").exists()


def test_verifies_signatures_nix_made(probe_top: str, tmp_path: Path, nonce: str) -> None:
    name = f"nix-made-{nonce}"  # signatures from earlier runs stay in the store
    secret_file = tmp_path / "nix.sec"
    public_file = tmp_path / "nix.pub"
    nix("nix-store", "--generate-binary-cache-key", name, str(secret_file), str(public_file))
    public = PublicKey.parse(public_file.read_text())
    secret = SecretKey.parse(secret_file.read_text())

    # `nix store sign` on a binary cache rewrites its narinfo files.
    cache = tmp_path / "cache"
    nix("nix", *NIX_COMMAND, "copy", "--to", f"file://{cache}?compression=none", probe_top)
    nix("nix", *NIX_COMMAND, "store", "sign", "--store", f"file://{cache}",
        "--key-file", str(secret_file), "--recursive", probe_top)  # fmt: skip
    narinfos = [NarInfo.parse(p.read_text()) for p in cache.glob("*.narinfo")]
    assert len(narinfos) == 3
    for info in narinfos:
        (sig,) = [s for s in info.sigs if s.startswith(name + ":")]
        assert public.verify(info.fingerprint(), sig)
        assert secret.sign(info.fingerprint()) == sig  # Ed25519 is deterministic

    # ... and in the local store, where the signature lands in the database. A path of
    # its own keeps the shared probe paths free of per-run signatures.
    content = tmp_path / "signed"
    content.mkdir()
    (content / "nonce").write_text(nonce)
    path = nix("nix-store", "--add", str(content)).strip()
    nix("nix", *NIX_COMMAND, "store", "sign", "--key-file", str(secret_file), path)
    (entry,) = json.loads(nix("nix", *NIX_COMMAND, "path-info", "--json", path))
    (sig,) = entry["signatures"]
    fp = fingerprint(entry["path"], entry["narHash"], entry["narSize"], entry["references"])
    assert public.verify(fp, sig)
