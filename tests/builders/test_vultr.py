"""The vultr provider against the fake Vultr API: the documented shapes, paging,
retries of 429 and 5xx with back-off, and a clear error for every other 4xx."""

from __future__ import annotations

import base64
import json
import time

import pytest

from nixfarm.builders.base import InstanceSpec, tags_of, user_data
from nixfarm.builders.vultr import VultrProvider
from nixfarm.config import VultrSettings
from nixfarm.errors import ConfigError, ProviderError
from tests.builders.fakevultr import KEY, FakeVultr

pytestmark = pytest.mark.anyio


def provider(vultr: FakeVultr, key: str = KEY, attempts: int = 4) -> VultrProvider:
    return VultrProvider(VultrSettings(api_key=key, api_url=vultr.url, backoff_seconds=0.05,
                                       attempts=attempts))


def spec(n: int = 1, plan: str = "vc2-1c-1gb", farm: str = "f1") -> InstanceSpec:
    return InstanceSpec(name=f"b-{n}", region="ewr", plan=plan, image="",
                        boot_url=f"http://farm.test/builders/{n}/boot.ipxe",
                        user_data=user_data("http://farm.test", "nfe_secret"),
                        tags=tags_of(farm, "vx", n))


async def test_create_poll_list_destroy(vultr: FakeVultr) -> None:
    vultr.polls_to_active = 2
    p = provider(vultr)
    try:
        made = await p.create(spec(1))
        assert made.state == "pending" and made.ip is None and made.builder_id == 1
        body = vultr.creates()[0]
        # The documented create: Custom OS, the chain URL, base64 user data, the tags.
        assert body["os_id"] == 159 and body["ipxe_chain_url"].endswith("/builders/1/boot.ipxe")
        assert json.loads(base64.b64decode(body["user_data"])) == {
            "server": "http://farm.test", "enroll_token": "nfe_secret"}
        assert body["tags"] == ["nixfarm-farm-f1", "nixfarm-pool-vx", "nixfarm-builder-1"]

        first = await p.get(made.id)
        assert first is not None and first.state == "pending"
        second = await p.get(made.id)
        assert second is not None and second.state == "active" and second.ip

        # Listing by the farm's tag pages through everything (page size 2 here) and
        # leaves other farms' instances out.
        for n in range(2, 6):
            await p.create(spec(n))
        await p.create(spec(9, farm="f2"))
        mine = await p.list(("nixfarm-farm-f1",))
        assert sorted(i.builder_id or 0 for i in mine) == [1, 2, 3, 4, 5]
        assert len(vultr.calls("GET", "/v2/instances")) > 3  # several pages

        await p.destroy(made.id)
        assert await p.get(made.id) is None
        await p.destroy(made.id)  # already gone: not an error
    finally:
        await p.close()


async def test_500_and_429_are_retried(vultr: FakeVultr) -> None:
    p = provider(vultr)
    try:
        vultr.fail("POST", "/v2/instances", 500)
        vultr.fail("POST", "/v2/instances", 429, retry_after="1")
        started = time.monotonic()
        made = await p.create(spec(1))
        # Three tries: the 500, the 429 (whose Retry-After was honoured), the 202.
        assert [s.status for s in vultr.calls("POST")] == [500, 429, 202]
        assert time.monotonic() - started >= 1.0
        assert len(vultr.live()) == 1 and made.id == vultr.live()[0]["id"]

        vultr.fail("GET", "/v2/instances", 503, times=2)
        assert await p.get(made.id) is not None
        vultr.fail("DELETE", "/v2/instances", 502)
        await p.destroy(made.id)
        assert vultr.live() == []
    finally:
        await p.close()


async def test_retries_give_up_with_the_last_error(vultr: FakeVultr) -> None:
    p = provider(vultr, attempts=3)
    try:
        vultr.fail("POST", "/v2/instances", 500, times=5)
        with pytest.raises(ProviderError) as caught:
            await p.create(spec(1))
        assert caught.value.status == 500 and "HTTP 500" in caught.value.message
        assert len(vultr.calls("POST")) == 3
    finally:
        await p.close()


async def test_every_4xx_is_a_clear_error_at_once(vultr: FakeVultr) -> None:
    p = provider(vultr)
    try:
        with pytest.raises(ProviderError) as caught:
            await p.create(spec(1, plan="vc9-nonsense"))
        message = caught.value.message
        assert "Invalid plan chosen." in message and "HTTP 400" in message, message
        assert "plan" in message.split(";")[1]  # what to check
        assert len(vultr.calls("POST")) == 1  # not retried
    finally:
        await p.close()

    wrong = provider(vultr, key="wrong-key")
    try:
        with pytest.raises(ProviderError) as caught:
            await wrong.list(("nixfarm-farm-f1",))
        assert caught.value.status == 401
        assert "Invalid API token." in caught.value.message
        assert "builders.vultr.api_key" in caught.value.message
        assert "wrong-key" not in caught.value.message  # the key is never repeated
    finally:
        await wrong.close()


def test_an_api_key_is_required(tmp_path: object) -> None:
    with pytest.raises(ConfigError) as caught:
        VultrProvider(VultrSettings(api_url="http://127.0.0.1:9/v2"))
    assert caught.value.key == "builders.vultr.api_key"
    with pytest.raises(ConfigError) as caught:
        VultrProvider(VultrSettings(api_key_file="/nonexistent/vultr.key"))
    assert "/nonexistent/vultr.key" in caught.value.message
