"""Nix formats and the nix command line: nix32, hashes, store paths, NARs, narinfo
files, signing keys, and an asynchronous runner for ``nix`` commands.

Everything here except :mod:`nixfarm.nix.command` is pure format code: no network,
no HTTP, and file system access only where a NAR is written from a tree.
"""
