"""The demo Nix package set bundled with nixfarm (see README.md in this directory).

It is plain package data: Nix expressions that build offline from the host's static
busybox. Nothing in nixfarm treats it specially; a server points at `path()` the way it
would point at a nixpkgs checkout.
"""

from pathlib import Path


def path() -> Path:
    """The directory holding the set's `default.nix` (and `bench.nix`)."""
    return Path(__file__).resolve().parent
