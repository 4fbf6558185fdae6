"""The ``vultr`` provider: instances through Vultr's API v2.

A builder is a Custom-OS instance (``os_id`` 159) whose firmware chain-loads the
farm's iPXE script (``ipxe_chain_url``); its user data (base64, as the API wants)
holds the server URL and the enrollment token. Every instance carries the farm's tags
(``base.tags_of``), so that listing by the farm's tag finds exactly this farm's.

Calls answered 429 or 5xx, or not at all, are tried again with jittered exponential
back-off (``retries.provider_calls``, ``Retry-After`` honoured); every other 4xx is
raised at once as a ``ProviderError`` that names the call, Vultr's own message and
what to check. A 404 is an answer, not an error, for ``get`` (None) and ``destroy``
(already gone).

Shapes: ``/work/shared/reference/vultr-api.md`` (POST /instances -> 202
``{"instance"}``, GET -> 200, DELETE -> 204, errors ``{"error", "status"}``, lists
paged by ``meta.links.next`` until it is "").
"""

from __future__ import annotations

import base64
import email.utils
import logging
import time
from pathlib import Path
from typing import Any

import httpx

from nixfarm.builders.base import Instance, InstanceSpec, InstanceState
from nixfarm.config import VultrSettings
from nixfarm.errors import ConfigError, ProviderError
from nixfarm.retries import provider_calls, retried

log = logging.getLogger("nixfarm.builders.vultr")

#: ``GET /v2/os`` lists it as ``{"id": 159, "name": "Custom", "family": "iso"}``: the
#: image of machines that boot what ``ipxe_chain_url`` gives them.
CUSTOM_OS = 159
_PAGE = 500

#: What to check, by the status Vultr answered.
_HINTS = {
    400: "check the pool's region, plan and image",
    401: "check builders.vultr.api_key (and the account's API access control list)",
    403: "the API key may not do this; check its permissions",
    404: "no such object",
    422: "check the pool's region, plan and image",
}


def api_key(settings: VultrSettings) -> str:
    """The API key, from ``api_key`` or ``api_key_file``; ConfigError if neither."""
    if settings.api_key:
        return settings.api_key.strip()
    if settings.api_key_file:
        try:
            key = Path(settings.api_key_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"builders.vultr.api_key_file {settings.api_key_file}: "
                              f"{e.strerror}", key="builders.vultr.api_key_file") from None
        if key:
            return key
    raise ConfigError("a pool uses the vultr provider, but builders.vultr.api_key (or "
                      "api_key_file) is not set", key="builders.vultr.api_key")


def _state(data: dict[str, Any]) -> InstanceState:
    status = data.get("status")
    ip = data.get("main_ip") or ""
    if status == "pending" or (status == "active" and ip in ("", "0.0.0.0")):
        return "pending"
    if status == "suspended" or data.get("power_status") == "stopped":
        return "stopped"
    return "active"


def _instance(data: dict[str, Any]) -> Instance:
    ip = data.get("main_ip") or None
    return Instance(id=str(data["id"]), provider="vultr", state=_state(data),
                    ip=None if ip == "0.0.0.0" else ip, label=str(data.get("label") or ""),
                    tags=tuple(data.get("tags") or ()))


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    if value.isdigit():
        return float(value)
    if value:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return 0.0


class VultrProvider:
    name = "vultr"
    #: Vultr's metadata service serves the instance's user data.
    boot_args = "nixfarm.userdata=http://169.254.169.254/latest/user-data"

    def __init__(self, settings: VultrSettings,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self._client = httpx.AsyncClient(
            base_url=settings.api_url.rstrip("/"), timeout=settings.request_seconds,
            headers={"Authorization": f"Bearer {api_key(settings)}",
                     "Accept": "application/json"}, transport=transport)

    async def _call(self, what: str, method: str, path: str,
                    **kwargs: Any) -> httpx.Response:
        policy = provider_calls(f"Vultr: {what}", log, self.settings.attempts,
                                self.settings.backoff_seconds)
        return await retried(policy, self._once, what, method, path, **kwargs)

    async def _once(self, what: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise ProviderError(f"Vultr did not answer ({what}): {e!r}", provider="vultr",
                                retryable=True) from None
        status = response.status_code
        if status < 400 or status == 404:
            return response
        try:
            said = str(response.json().get("error") or "").strip()
        except ValueError:
            said = ""
        said = said or response.text.strip()[:200] or response.reason_phrase
        if status == 429 or status >= 500:
            raise ProviderError(f"Vultr failed to {what}: {said} (HTTP {status})",
                                provider="vultr", status=status,
                                retryable=status != 501,
                                retry_after=_retry_after(response) if status in (429, 503)
                                else 0.0)
        hint = _HINTS.get(status, "Vultr refused the request")
        raise ProviderError(f"Vultr refused to {what}: {said} (HTTP {status}); {hint}",
                            provider="vultr", status=status)

    async def create(self, spec: InstanceSpec) -> Instance:
        body: dict[str, Any] = {
            "region": spec.region, "plan": spec.plan, "os_id": CUSTOM_OS,
            "ipxe_chain_url": spec.boot_url, "label": spec.name, "hostname": spec.name,
            "tags": list(spec.tags), "backups": "disabled", "activation_email": False,
            "enable_ipv6": True,
            "user_data": base64.b64encode(spec.user_data).decode(),
        }
        what = f"create instance {spec.name} ({spec.plan} in {spec.region})"
        response = await self._call(what, "POST", "/instances", json=body)
        if response.status_code == 404:
            raise ProviderError(f"Vultr refused to {what}: not found (HTTP 404); check "
                                "builders.vultr.api_url", provider="vultr", status=404)
        return _instance(response.json()["instance"])

    async def get(self, instance_id: str) -> Instance | None:
        response = await self._call(f"look at instance {instance_id}", "GET",
                                    f"/instances/{instance_id}")
        if response.status_code == 404:
            return None
        return _instance(response.json()["instance"])

    async def list(self, tags: tuple[str, ...]) -> list[Instance]:
        found: list[Instance] = []
        cursor = ""
        while True:
            params: dict[str, str | int] = {"per_page": _PAGE}
            if tags:  # deprecated but served; every tag is checked below anyway
                params["tag"] = tags[0]
            if cursor:
                params["cursor"] = cursor
            response = await self._call("list instances", "GET", "/instances", params=params)
            if response.status_code == 404:
                raise ProviderError("Vultr refused to list instances: not found (HTTP 404); "
                                    "check builders.vultr.api_url", provider="vultr",
                                    status=404)
            page = response.json()
            found.extend(i for i in map(_instance, page.get("instances") or ())
                         if set(tags) <= set(i.tags))
            cursor = str(((page.get("meta") or {}).get("links") or {}).get("next") or "")
            if not cursor:
                return found

    async def destroy(self, instance_id: str) -> None:
        # 404: already gone, which is what was asked.
        await self._call(f"delete instance {instance_id}", "DELETE", f"/instances/{instance_id}")

    async def close(self) -> None:
        await self._client.aclose()
