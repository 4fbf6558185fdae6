"""OCI formats: digests, image configs and manifests, deterministic tar layers."""
