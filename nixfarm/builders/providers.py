"""Which provider a pool's machines come from: the one factory of providers.

A farm opens each provider its pools name once (``open_providers``), and closes them
when it stops. A new provider is one more branch in ``open_provider``.
"""

from __future__ import annotations

from nixfarm.builders.base import Provider
from nixfarm.config import Settings
from nixfarm.errors import ConfigError


def open_provider(kind: str, settings: Settings) -> Provider:
    """The provider called ``kind``; ConfigError if it is unknown or misconfigured."""
    if kind == "vultr":
        from nixfarm.builders.vultr import VultrProvider

        return VultrProvider(settings.builders.vultr)
    if kind == "local":
        from nixfarm.builders.local import LocalProvider

        return LocalProvider(settings.data_dir / "builders" / "local")
    raise ConfigError(f"builder provider {kind!r} is not available in this farm",
                      key="builders.pools.provider")


def open_providers(settings: Settings) -> dict[str, Provider]:
    """One provider per kind the configured pools use."""
    providers: dict[str, Provider] = {}
    for pool in settings.builders.pools:
        if pool.provider not in providers:
            providers[pool.provider] = open_provider(pool.provider, settings)
    return providers
