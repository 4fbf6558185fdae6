"""The provider Protocol: where builders' machines come from.

A provider knows four verbs, all of them about one cloud account (or one host):
``create`` an instance from an ``InstanceSpec``, ``get`` one, ``list`` the ones that
carry some tags, and ``destroy`` one. It knows nothing of pools, jobs or the
database: the builder service (``service.py``) decides, the provider does.

Tags tie an instance to this farm, its pool and its builder row; the reaper trusts
them, so every provider must store them with the instance and give them back
(Vultr: instance ``tags``; the local provider: wherever it keeps its VMs' state):

    nixfarm-farm-<farm id>      every instance of this farm (the reaper lists these)
    nixfarm-pool-<pool>         the pool it was created for
    nixfarm-builder-<id>        its row in ``builders``

How a machine boots and joins (the URL shape every provider and the server's boot
routes agree on):

- ``InstanceSpec.boot_url`` is ``<public URL>/builders/<id>/boot.ipxe``: the iPXE
  script the farm serves for that builder (the netboot image's kernel, initramfs and
  command line). Vultr puts it in ``ipxe_chain_url``; the local provider gives it to
  qemu's iPXE ROM.
- ``InstanceSpec.user_data`` is JSON ``{"server": URL, "enroll_token": "nfe_..."}``
  and nothing else: the machine trades the token (once, within minutes) for its runner
  token at ``POST /api/v1/builders/enroll`` (see ``enrollment.py``). No signing key and
  no long-lived secret is ever in it. Providers pass it through untouched (Vultr
  base64-encodes it, as its API wants).

Adding a provider (the ``local`` one, say): a module here with a class that has
these four methods, ``close``, its ``boot_args``, and one branch in ``providers.open_provider``.
The conformance expectations are in tests/builders: ``create`` returns at once with
the instance ``pending`` or ``active``; ``get`` of a destroyed instance is None;
``destroy`` of an instance already gone is not an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal, Protocol

#: pending (being made or booting), active (running), stopped, gone (destroyed)
InstanceState = Literal["pending", "active", "stopped", "gone"]

FARM_TAG = "nixfarm-farm-"
POOL_TAG = "nixfarm-pool-"
BUILDER_TAG = "nixfarm-builder-"


def farm_tag(farm_id: str) -> str:
    return FARM_TAG + farm_id


def tags_of(farm_id: str, pool: str, builder_id: int) -> tuple[str, ...]:
    return (farm_tag(farm_id), POOL_TAG + pool, f"{BUILDER_TAG}{builder_id}")


def user_data(server: str, enroll_token: str) -> bytes:
    """What a builder's machine is given: the server's URL and its enrollment token."""
    return json.dumps({"server": server, "enroll_token": enroll_token}).encode()


@dataclass(frozen=True)
class InstanceSpec:
    """What to create: one builder's machine."""

    #: Label and hostname: the builder's name.
    name: str
    region: str
    plan: str
    #: What the machine boots ("" for nixfarm's netboot image through ``boot_url``).
    image: str
    #: The iPXE script the machine chain-loads.
    boot_url: str
    #: ``user_data(...)``: handed to the machine as it is.
    user_data: bytes
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Instance:
    """A machine as its provider sees it."""

    #: The provider's id of the instance.
    id: str
    #: The provider's name (``vultr``, ``local``).
    provider: str
    state: InstanceState
    #: Its public address, once it has one.
    ip: str | None
    label: str = ""
    tags: tuple[str, ...] = field(default=())

    @property
    def builder_id(self) -> int | None:
        """The builder row its tags name, if any."""
        for tag in self.tags:
            if tag.startswith(BUILDER_TAG) and tag[len(BUILDER_TAG):].isdigit():
                return int(tag[len(BUILDER_TAG):])
        return None

    @property
    def pool(self) -> str | None:
        for tag in self.tags:
            if tag.startswith(POOL_TAG):
                return tag[len(POOL_TAG):]
        return None


class Provider(Protocol):
    """A source of machines. Every method may raise ``nixfarm.errors.ProviderError``."""

    name: str
    #: The kernel command-line words the netboot image's bootstrap needs on this
    #: provider's machines: where their user data is (``nixfarm.userdata=``: a URL, or
    #: ``fwcfg``), and anything else about their network. Never what the data holds.
    boot_args: str

    async def create(self, spec: InstanceSpec) -> Instance:
        """Ask for a machine; returns as soon as the provider has accepted it (the
        instance is usually ``pending``). Not idempotent: each call is a new machine."""
        ...

    async def get(self, instance_id: str) -> Instance | None:
        """The instance now, or None if it does not exist (any more)."""
        ...

    async def list(self, tags: tuple[str, ...]) -> list[Instance]:
        """Every instance that carries all of ``tags`` (all pages of them)."""
        ...

    async def destroy(self, instance_id: str) -> None:
        """Destroy an instance; one that is already gone is not an error (idempotent)."""
        ...

    async def close(self) -> None:
        """Release connections; the provider is not used after."""
        ...
