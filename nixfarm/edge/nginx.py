"""nginx's configuration for the edge, and running nginx next to the app.

The configuration is rendered from the settings at every start. Each location that
may answer without the app is a regular expression as strict as the app's own
validation (cache names, nix32 hashes, OCI name components and digests), tries the
published tree for GET and HEAD only (``$nf_www`` is an empty directory for other
methods, so a PUT always reaches the app), and falls back to ``@app``.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

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
_IMMUTABLE = 'add_header Cache-Control "public, max-age=31536000, immutable";'
_REGISTRY_HEADERS = "add_header Docker-Distribution-API-Version registry/2.0;"
_STATIC = "set $nf_kind static;\n            access_log {access};"


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


def _user() -> str:
    # Run as root, nginx would hand requests to workers running as nobody, who cannot
    # read the data directory; give them the farm's own user instead.
    if os.geteuid() != 0:
        return ""
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
    # Buffered: one write per 64 KiB or per second, not a system call per request.
    access = f"{layout.access_log} nixfarm buffer=64k flush=1s"
    static = _STATIC.format(access=access)
    www, empty, run = layout.www, layout.empty, layout.run
    workers = settings.edge.workers or "auto"
    registry_public = not settings.registry.require_auth
    parts = [f"""
{_user()}
worker_processes {workers};
daemon off;
pid {layout.pid_file};
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    types {{ }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    server_tokens off;
    keepalive_requests 100000;
    client_body_temp_path {run}/temp/body;
    proxy_temp_path {run}/temp/proxy;
    fastcgi_temp_path {run}/temp/fastcgi;
    uwsgi_temp_path {run}/temp/uwsgi;
    scgi_temp_path {run}/temp/scgi;
    access_log off;
    log_format nixfarm
        '$nf_kind $request_method $status $body_bytes_sent $request_time $request_uri';
    # No open_file_cache: a withdrawn answer (a re-upload, a changed source) must stop
    # being served at once, not when nginx next checks its cached descriptor.

    upstream nixfarm_app {{
        server unix:{layout.app_socket};
        keepalive 64;
    }}

    map $request_method $nf_www {{ GET {www}; HEAD {www}; default {empty}; }}
    map $request_method $nf_store {{
        GET {store_root or empty}; HEAD {store_root or empty}; default {empty};
    }}
    # nginx 1.22 sees only the first Accept header. It answers a tag only when there is
    # none, or the first names Docker schema 2 without q-values: then the app's
    # negotiation (which prefers Docker on a tie) gives Docker whatever else is sent.
    map $http_accept $nf_docker {{
        default 0;
        "" 1;
        "~q=" 0;
        "~application/vnd\\.docker\\.distribution\\.manifest\\.v2\\+json" 1;
    }}
    map $uri $nf_tag {{
        default "";
        include {layout.tags_map};
    }}
    map "$nf_docker$nf_tag" $nf_tag_hex {{
        default "";
        "~^1(?<h>[0-9a-f]{{64}})$" $h;
    }}

    server {{
        listen {_listen(settings)} backlog=4096;
        client_max_body_size 0;
        # The buffer an unbuffered upload passes through: at the default 16 KiB, nginx
        # relayed NAR uploads at ~60 MB/s; at 1 MiB they go as fast as without nginx.
        client_body_buffer_size 1m;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        # Uploads and live logs stream through, never buffered to disk.
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_max_temp_file_size 0;
        proxy_read_timeout 1d;
        proxy_send_timeout 1d;

        location / {{ proxy_pass http://nixfarm_app; }}
        location @app {{ proxy_pass http://nixfarm_app; }}

        location {ACCEL_PREFIX} {{
            internal;
            alias {store_root or empty}/;
            set $nf_kind accel;
            access_log {access};
        }}

        location ~ "^{_CACHE}/nix-cache-info$" {{
            root $nf_www;
            default_type text/x-nix-cache-info;
            {static}
            try_files $uri @app;
        }}
        location ~ "^{_CACHE}/{_NIX32}{{32}}\\.narinfo$" {{
            root $nf_www;
            default_type text/x-nix-narinfo;
            {static}
            try_files $uri @app;
        }}
        location ~ "^{_CACHE}/nar/{_NIX32}{{52}}\\.nar(\\.[a-z0-9]+)?$" {{
            root $nf_www;
            default_type application/x-nix-nar;
            {_IMMUTABLE}
            {static}
            try_files $uri @app;
        }}
"""]
    if registry_public:
        parts.append(f"""
        location ~ "^/v2/{_NAME}/manifests/sha256:(?<nf_digest>[0-9a-f]{{64}})$" {{
            root $nf_www;
            types {{
                application/vnd.docker.distribution.manifest.v2+json docker;
                application/vnd.oci.image.manifest.v1+json oci;
            }}
            {_REGISTRY_HEADERS}
            add_header Docker-Content-Digest sha256:$nf_digest;
            {static}
            try_files /registry/manifests/$nf_digest.docker /registry/manifests/$nf_digest.oci @app;
        }}
        location ~ "^/v2/{_NAME}/manifests/{_TAG}$" {{
            root $nf_www;
            types {{ application/vnd.docker.distribution.manifest.v2+json docker; }}
            {_REGISTRY_HEADERS}
            add_header Docker-Content-Digest sha256:$nf_tag_hex;
            {static}
            try_files /registry/manifests/$nf_tag_hex.docker @app;
        }}
""")
        if store_root is not None:
            parts.append(f"""
        location ~ "^/v2/{_NAME}/blobs/sha256:(?<nf_blob>[0-9a-f]{{64}})$" {{
            root $nf_store;
            {_REGISTRY_HEADERS}
            add_header Docker-Content-Digest sha256:$nf_blob;
            {_IMMUTABLE}
            {static}
            try_files /registry/blobs/sha256/$nf_blob @app;
        }}
""")
    parts.append("    }\n}\n")
    return "".join(parts)


def check(binary: str, layout: EdgeLayout) -> None:
    """``nginx -t``: a broken configuration stops the start with nginx's own words."""
    done = subprocess.run([binary, "-t", "-q", *layout.nginx_args()], capture_output=True,
                          check=False)
    if done.returncode != 0:
        raise ConfigError(f"nginx refused the edge configuration ({layout.config}): "
                          f"{done.stderr.decode().strip()}", key="edge")
