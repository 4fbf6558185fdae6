"""``nixfarm use CACHE``: make Nix substitute from a cache, as ``cachix use`` and ``attic use`` do.

Nix needs three things to trust a cache: the cache's URL among its substituters, the
cache's public key among its trusted keys, and, for a private cache, a password in a
netrc file. ``use`` writes them into the user's Nix configuration (or prints them with
``--print``), idempotently: using the same cache again replaces its lines rather than
adding more. A private cache gets a token of its own that may only pull from it, never
the (possibly admin) token the command runs with.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from nixfarm.cli.common import DataDir, Token, Url, err, out, with_client
from nixfarm.client.api import Client
from nixfarm.errors import Forbidden
from nixfarm.scopes import cache_scope

#: Marks the lines ``use`` wrote for a cache, so a second run replaces them.
_MARK = "# nixfarm use {name}"


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def use(
    name: str,
    print_only: Annotated[bool, typer.Option(
        "--print", help="Print the nix.conf and netrc lines instead of writing them.")] = False,
    nix_conf: Annotated[Path | None, typer.Option(
        help="The nix.conf to write [default: $XDG_CONFIG_HOME/nix/nix.conf].",
        show_default=False)] = None,
    netrc: Annotated[Path | None, typer.Option(
        help="The netrc file for private caches [default: $XDG_CONFIG_HOME/nix/netrc].",
        show_default=False)] = None,
    url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """Configure Nix to substitute from the cache NAME (its URL, its key, a netrc entry)."""
    conf_path = nix_conf or _config_home() / "nix" / "nix.conf"
    netrc_path = netrc or conf_path.with_name("netrc")

    async def work(c: Client) -> tuple[str, str, str | None]:
        cache = await c.cache(name)
        secret = None
        if cache.private:
            secret = await _pull_token(c, name)
        return cache.url, cache.public_key, secret

    cache_url, key, secret = with_client(url, token, data_dir, work)
    lines = [f"extra-substituters = {cache_url}", f"extra-trusted-public-keys = {key}"]
    machine = urlsplit(cache_url).hostname or ""
    netrc_line = f"machine {machine} login nixfarm password {secret}" if secret else None
    if netrc_line:
        lines.append(f"netrc-file = {netrc_path}")
    if print_only:
        out.print(f"# {conf_path}", markup=False)
        out.print("\n".join(lines), markup=False)
        if netrc_line:
            out.print(f"# {netrc_path}\n{netrc_line}", markup=False)
        return
    _replace_block(conf_path, name, lines, mode=0o644)
    if netrc_line:
        _replace_block(netrc_path, name, [netrc_line], mode=0o600)
    err.print(f"Nix now substitutes from {cache_url} (wrote {conf_path}"
              f"{f' and {netrc_path}' if netrc_line else ''}). A daemon-based Nix takes "
              "extra-substituters only from trusted users: as another user, add these lines "
              "to /etc/nix/nix.conf instead (nixfarm use --print).", markup=False)


async def _pull_token(c: Client, name: str) -> str:
    """A new token that may only pull from the cache; the caller's own when it may not
    make tokens (then it is a token with little more than that scope anyway)."""
    try:
        made = await c.create_token(f"nixfarm use {name}", [cache_scope(name, "pull")])
    except Forbidden:
        return c.endpoint.token or ""
    return made.secret or ""


def _replace_block(path: Path, name: str, lines: list[str], *, mode: int) -> None:
    """Put ``lines`` under this cache's mark in ``path``, replacing an earlier block."""
    mark = _MARK.format(name=name)
    text = path.read_text() if path.exists() else ""
    # A block runs from its mark to the next blank line.
    text = re.sub(rf"(?m)^{re.escape(mark)}\n(?:.+\n)*\n?", "", text)
    if text and not text.endswith("\n"):
        text += "\n"
    text += "\n".join([mark, *lines]) + "\n\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.nixfarm-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
