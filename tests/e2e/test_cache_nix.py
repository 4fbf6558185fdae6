"""Stock Nix against a running nixfarm: upload, substitute with signatures, logs."""

from __future__ import annotations

import uuid
from pathlib import Path

import zstandard

from tests.fixtures.farm import RunningFarm
from tests.fixtures.nixenv import DEMO, NIX_COMMAND, Nix


def _files(store: Path, path: str) -> dict[str, bytes]:
    root = store / path.lstrip("/")
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def test_nix_copy_uploads_and_fresh_store_substitutes_with_signatures(
        farm: RunningFarm, nix: Nix) -> None:
    name, key = farm.create_cache()
    motd = nix.build("motd")
    closure = nix.run("nix-store", "-qR", motd).stdout.split()
    assert len(closure) >= 5
    nix.run("nix", *NIX_COMMAND, "copy", "--option", "netrc-file", str(nix.netrc(farm.token)),
            "--to", f"{farm.url}/cache/{name}", motd)

    store = nix.fresh_store()
    nix.substitute(store, motd, f"{farm.url}/cache/{name}", key)
    for path in closure:
        assert (store / path.lstrip("/")).exists(), path
    assert _files(store, motd) == _files(Path("/"), motd)


def test_signatures_from_another_key_are_refused(farm: RunningFarm, nix: Nix) -> None:
    name, _ = farm.create_cache()
    _, other_key = farm.create_cache()
    hello = nix.build("hello")
    farm.cli("push", "--cache", name, hello)
    done = nix.substitute(nix.fresh_store(), hello, f"{farm.url}/cache/{name}", other_key,
                          check=False)
    assert done.returncode != 0
    assert "not signed by any of the keys" in done.stderr


def test_nixfarm_push_uploads_closure_and_fresh_store_substitutes(
        farm: RunningFarm, nix: Nix) -> None:
    name, key = farm.create_cache()
    motd = nix.build("motd")
    closure = set(nix.run("nix-store", "-qR", motd).stdout.split())
    pushed = farm.cli("push", "--cache", name, motd)
    assert set(pushed.stdout.split()) == closure
    assert f"{len(closure)} to upload" in pushed.stderr

    # A second push finds nothing missing and uploads nothing.
    again = farm.cli("push", "--cache", name, motd)
    assert again.stdout.split() == []
    assert "0 to upload" in again.stderr

    store = nix.fresh_store()
    nix.substitute(store, motd, f"{farm.url}/cache/{name}", key)
    assert _files(store, motd) == _files(Path("/"), motd)
    info = farm.get(f"/cache/{name}/{Path(motd).name[:32]}.narinfo").text
    assert "Compression: zstd" in info and ".nar.zst" in info


def test_push_with_xz_and_without_compression(farm: RunningFarm, nix: Nix) -> None:
    hello = nix.build("hello")
    for compression, ext in (("xz", ".nar.xz"), ("none", ".nar\n")):
        name, key = farm.create_cache()
        farm.cli("push", "--cache", name, "--compression", compression, hello)
        info = farm.get(f"/cache/{name}/{Path(hello).name[:32]}.narinfo").text
        assert f"Compression: {compression}" in info and ext in info
        nix.substitute(nix.fresh_store(compression), hello, f"{farm.url}/cache/{name}", key)


def test_tampered_nar_on_disk_is_refused_by_nix(farm: RunningFarm, nix: Nix) -> None:
    name, key = farm.create_cache()
    hello = nix.build("hello")
    farm.cli("push", "--cache", name, hello)
    info = farm.get(f"/cache/{name}/{Path(hello).name[:32]}.narinfo").text
    url = next(line.split(": ", 1)[1] for line in info.splitlines() if line.startswith("URL:"))
    stored = farm.data_dir / "store" / url
    nar = zstandard.ZstdDecompressor().decompressobj().decompress(stored.read_bytes())
    assert b"Hello, world!" in nar
    stored.write_bytes(zstandard.ZstdCompressor().compress(
        nar.replace(b"Hello, world!", b"Hacked, world")))

    store = nix.fresh_store()
    done = nix.substitute(store, hello, f"{farm.url}/cache/{name}", key, check=False)
    assert done.returncode != 0
    assert "hash mismatch" in done.stderr
    # Nix may leave the unpacked directory behind, but never registers it as valid.
    valid = nix.run("nix-store", "--store", str(store), "--check-validity", hello, check=False)
    assert valid.returncode != 0


def test_build_log_uploaded_by_nix_is_served_to_nix_log(farm: RunningFarm, nix: Nix,
                                                        tmp_path: Path) -> None:
    name, _ = farm.create_cache()
    marker = f"log-marker-{uuid.uuid4().hex}"
    expr = tmp_path / "chatty.nix"
    expr.write_text(f"""
      let demo = import {DEMO} {{}}; in derivation {{
        name = "chatty"; system = builtins.currentSystem;
        builder = "${{demo.busybox}}/bin/sh";
        args = [ "-c" "echo {marker}; echo second line >&2; ${{demo.busybox}}/bin/mkdir $out" ];
      }}""")
    out = nix.run("nix-build", str(expr), "--no-out-link").stdout.strip()
    drv = nix.run("nix-store", "-q", "--deriver", out).stdout.strip()
    nix.run("nix", *NIX_COMMAND, "store", "copy-log", "--option", "netrc-file",
            str(nix.netrc(farm.token)), "--to", f"{farm.url}/cache/{name}", out)

    farm.cli("push", "--cache", name, out)  # nix log finds the deriver in the narinfo

    served = farm.get(f"/cache/{name}/log/{Path(drv).name}")
    assert served.status_code == 200 and marker in served.text
    fetched = nix.run("nix", *NIX_COMMAND, "log", "--store", f"{farm.url}/cache/{name}", out)
    assert marker in fetched.stdout and "second line" in fetched.stdout


def test_listings_match_nix_and_serve_nix_store_ls(farm: RunningFarm, nix: Nix,
                                                   tmp_path: Path) -> None:
    name, _ = farm.create_cache()
    tree = nix.build("tree")
    farm.cli("push", "--cache", name, tree)
    nix.run("nix", *NIX_COMMAND, "copy", "--to",
            f"file://{tmp_path}/file-cache?write-nar-listing=true&compression=none", tree)
    hash_part = Path(tree).name[:32]
    ours = farm.get(f"/cache/{name}/{hash_part}.ls")
    assert ours.status_code == 200
    assert ours.content == (tmp_path / "file-cache" / f"{hash_part}.ls").read_bytes()
    listed = nix.run("nix", *NIX_COMMAND, "store", "ls", "--store", f"{farm.url}/cache/{name}",
                     "-R", f"{tree}/bin")
    assert "tree" in listed.stdout
    assert farm.get(f"/cache/{name}/{'1' * 32}.ls").status_code == 404
