"""The OCI registry: package sources, image composition, layer grouping and caches."""
