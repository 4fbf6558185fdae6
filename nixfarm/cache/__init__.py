"""Signed Nix binary caches: ingest, signing, lookup."""
