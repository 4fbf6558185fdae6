"""nginx's configuration for the edge, and running nginx next to the app.

The configuration is rendered from the settings at every start, from the Jinja2
template ``nginx.conf.j2`` beside this module. Each location that
may answer without the app is a regular expression as strict as the app's own
validation (cache names, nix32 hashes, OCI name components and digests), tries the
published tree for GET and HEAD only (``$nf_www`` is an empty directory for other
methods, so a PUT always reaches the app), and falls back to ``@app``.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import jinja2

from nixfarm import hardening
from nixfarm.config import Settings
from nixfarm.edge.layout import ACCEL_PREFIX, EdgeLayout
from nixfarm.errors import ConfigError
from nixfarm.naming import CACHE_NAME_PATTERN

_NIX32 = "[0-9a-df-np-sv-z]"
_CACHE = f"/cache/{CACHE_NAME_PATTERN}"
_COMPONENT = "[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# An OCI name as names.check_name accepts it: components, at most 255 characters in
# all and 128 in each (the lookaheads), so nginx never answers for a name the app
# would refuse.
_NAME = f"(?=[^?]{{1,255}}/(?:manifests|blobs)/)(?![^?]*[^/]{{129}}){_COMPONENT}(?:/{_COMPONENT})*"
_TAG = "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
#: The template beside this module (package data).
TEMPLATE = "nginx.conf.j2"


def binary(settings: Settings) -> str | None:
    """The nginx to run, or None when the edge is off (or ``auto`` finds no nginx)."""
    mode = settings.edge.server
    if mode == "none":
        return None
    found = shutil.which(settings.edge.nginx) or shutil.which(
        settings.edge.nginx, path="/usr/sbin:/usr/local/sbin:/sbin")
    if found is None and mode == "nginx":
        raise ConfigError(f"edge.server is 'nginx' but {settings.edge.nginx!r} is not "
                          "installed; install nginx or set edge.server to 'none'.",
                          key="edge.nginx")
    return found


def _listen(settings: Settings) -> str:
    host = settings.host
    return f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"


def _user(data_dir: Path) -> str:
    # Run as root, nginx's workers run as nixfarm-www, which may pass the data
    # directory's gate to what they serve (see nixfarm/hardening.py); without that
    # user, as the farm's own (root: a warning says so at start).
    if os.geteuid() != 0:
        return ""
    www = hardening.www_user(data_dir)
    if www is not None:
        return f"user {www[0]} {www[1]};"
    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"


def _check_path(path: Path, key: str) -> None:
    # Paths go into nginx.conf unquoted; refuse the few characters that would break it.
    if not re.fullmatch(r"[A-Za-z0-9._/+@=,-]+", str(path)):
        raise ConfigError(f"{key} {str(path)!r} has characters nginx's configuration cannot "
                          "hold (spaces, quotes, ';', ...); move it or set edge.server to "
                          "'none'.", key=key)


def render(settings: Settings, layout: EdgeLayout, store_root: Path | None) -> str:
    """The whole nginx.conf; ``store_root`` is the filesystem store's root (None on S3)."""
    _check_path(layout.root, "data_dir")
    if store_root is not None:
        _check_path(store_root, "storage.path")
    return _template().render(
        user=_user(settings.data_dir),
        workers=settings.edge.workers or "auto",
        header_timeout=settings.edge.client_header_seconds,
        body_timeout=settings.edge.client_body_seconds,
        layout=layout,
        store=store_root or layout.empty,
        listen=_listen(settings),
        # Buffered: one write per 64 KiB or per second, not a system call per request.
        access=f"{layout.access_log} nixfarm buffer=64k flush=1s",
        accel_prefix=ACCEL_PREFIX,
        cache=_CACHE,
        nix32=_NIX32,
        name=_NAME,
        tag=_TAG,
        registry_public=not settings.registry.require_auth,
        blobs=store_root is not None,
    )


@functools.cache
def _template() -> jinja2.Template:
    # Not HTML: nothing is escaped (the values are checked above), and undefined
    # names are errors rather than empty strings in nginx's configuration.
    environment = jinja2.Environment(autoescape=False, keep_trailing_newline=True,
                                     trim_blocks=True, undefined=jinja2.StrictUndefined)
    source = resources.files("nixfarm.edge").joinpath(TEMPLATE).read_text()
    return environment.from_string(source)


def check(binary: str, layout: EdgeLayout) -> None:
    """``nginx -t``: a broken configuration stops the start with nginx's own words."""
    done = subprocess.run([binary, "-t", "-q", *layout.nginx_args()], capture_output=True,
                          check=False)
    if done.returncode != 0:
        raise ConfigError(f"nginx refused the edge configuration ({layout.config}): "
                          f"{done.stderr.decode().strip()}", key="edge")
