"""What every provider must do (nixfarm/builders/base.py), run against each one that
can be reached here: ``vultr`` through the fake Vultr API, and ``local`` for real (its
instances are qemu processes, booting an iPXE URL nobody answers). (A provider added
later joins the parametrisation with a factory of its own.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nixfarm.builders.base import InstanceSpec, Provider, farm_tag, tags_of, user_data
from nixfarm.builders.local import LocalProvider
from nixfarm.builders.vultr import VultrProvider
from nixfarm.config import VultrSettings
from tests.builders.fakevultr import KEY, FakeVultr

pytestmark = pytest.mark.anyio


#: A small plan of each provider.
PLANS = {"vultr": "vc2-1c-1gb", "local": "1c-256m-1g"}


@pytest.fixture(params=["vultr", "local"])
async def provider(request: pytest.FixtureRequest, tmp_path: Path
                   ) -> AsyncIterator[Provider]:
    made: Provider
    if request.param == "vultr":
        vultr: FakeVultr = request.getfixturevalue("vultr")
        made = VultrProvider(VultrSettings(api_key=KEY, api_url=vultr.url))
    else:
        made = LocalProvider(tmp_path / "local")
    yield made
    await made.close()


def spec(n: int, farm: str = "conf", provider: str = "vultr") -> InstanceSpec:
    return InstanceSpec(name=f"conf-{n}", region="ewr", plan=PLANS[provider], image="",
                        boot_url=f"http://127.0.0.1:1/builders/{n}/boot.ipxe",
                        user_data=user_data("http://127.0.0.1:1", "nfe_x"),
                        tags=tags_of(farm, "p", n))


async def test_the_four_verbs(provider: Provider) -> None:
    made = await provider.create(spec(1, provider=provider.name))
    other = await provider.create(spec(2, farm="another", provider=provider.name))
    try:
        # create answers at once, with the tags kept and the builder readable from them.
        assert made.state in ("pending", "active") and made.provider == provider.name
        assert made.builder_id == 1 and made.pool == "p"
        seen = await provider.get(made.id)
        assert seen is not None and seen.id == made.id and set(spec(1).tags) <= set(seen.tags)
        # list finds exactly the instances carrying all the tags asked for.
        assert [i.id for i in await provider.list((farm_tag("conf"),))] == [made.id]
        assert [i.id for i in await provider.list((farm_tag("conf"), "nixfarm-pool-q"))] == []
    finally:
        await provider.destroy(made.id)
        await provider.destroy(other.id)
    # destroy is idempotent, and a destroyed instance is None.
    await provider.destroy(made.id)
    assert await provider.get(made.id) is None
    assert await provider.list((farm_tag("conf"),)) == []
