"""Images that rebuild themselves: the job that builds a catalogue image.

As on builds.sr.ht (``images/<distro>/build.yml``), each buildable distro has a
``<distro>/build.yml``: a manifest whose tasks run the distro's ``genimg`` in a job
(Debian's: in a ``debian/bookworm`` VM, debootstrap as root through sudo) and keep
the image as the job's artifacts, ``root.img.qcow2`` and ``recipe.sha256``. A runner
takes them with ``nixfarm image install IMAGE --from-job JOB``; the server's
scheduled jobs run it on a cron (``nixfarm image schedule``). docs/images.md.

builds.sr.ht's build.yml clones its own repository to reach genimg. A farm knows no
URL of nixfarm's source, and a job must build the recipe this farm has, so
``manifest`` puts the recipe in the job instead: a first task, ``recipe``, unpacks
into ``~/recipe`` a tar of the recipe's files, the genimg and ``recipe.sha256``
(a few KB in base64; deterministic, so one recipe gives one manifest), and the
manifest's environment says which ``release`` and ``arch`` to build. The rest of
the build.yml, comments included, is kept as written.
"""

from __future__ import annotations

import base64
import gzip
import io
import tarfile
import textwrap
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import LiteralScalarString

from nixfarm.images import HASH_FILE, ImageError, Recipe, recipe_hash

BUILD_FILE = "build.yml"
#: The task ``manifest`` puts first, and where it unpacks the recipe.
RECIPE_TASK = "recipe"


def build_file(recipe: Recipe) -> Path | None:
    """The distro's build.yml (``<distro>/build.yml`` of the recipe's catalogue)."""
    path = recipe.directory.parent.parent / BUILD_FILE
    return path if path.is_file() else None


def manifest(recipe: Recipe) -> str:
    """The manifest of the job that builds ``recipe`` (see the module docstring)."""
    template = build_file(recipe)
    if recipe.kind != "disk" or template is None:
        raise ImageError(f"{recipe.name} has no {BUILD_FILE}: only disk images whose distro "
                         f"has one are built by a job.")
    yaml = YAML()  # round-trip: the build.yml's comments and order stay
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    try:
        data = yaml.load(template.read_text())
    except Exception as e:  # ruamel's errors have no common base worth naming
        raise ImageError(f"Cannot read {template}: {e}") from e
    if not isinstance(data, CommentedMap) or not isinstance(data.get("tasks"), CommentedSeq):
        raise ImageError(f"{template} is not a manifest with tasks.")
    environment = data.setdefault("environment", CommentedMap())
    environment["release"] = recipe.release
    environment["arch"] = recipe.arch
    data["tasks"].insert(0, CommentedMap({RECIPE_TASK: LiteralScalarString(_unpack(recipe))}))
    text = io.StringIO()
    yaml.dump(data, text)
    return text.getvalue()


def _unpack(recipe: Recipe) -> str:
    """The recipe task's script: ``~/recipe`` from a tar.gz in the script itself."""
    encoded = base64.b64encode(_archive(recipe)).decode()
    lines = "\n".join(textwrap.wrap(encoded, 76))
    return (f"# {recipe.canonical} {recipe.arch}, recipe {recipe_hash(recipe)}\n"
            f"mkdir ~/{RECIPE_TASK}\n"
            f"base64 -d > recipe.tar.gz <<'RECIPE'\n{lines}\nRECIPE\n"
            f"tar -xzf recipe.tar.gz -C ~/{RECIPE_TASK}\nrm recipe.tar.gz\n"
            f"ls -l ~/{RECIPE_TASK}\n")


def _archive(recipe: Recipe) -> bytes:
    """The recipe's files, its genimg and its hash, as a reproducible tar.gz."""
    genimg = recipe.genimg
    if genimg is None:
        raise ImageError(f"{recipe.name} has no genimg.")
    files = {p.name: p.read_bytes() for p in sorted(recipe.directory.iterdir()) if p.is_file()}
    files["genimg"] = genimg.read_bytes()
    files[HASH_FILE] = (recipe_hash(recipe) + "\n").encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o755 if name == "genimg" else 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(raw.getvalue(), mtime=0)
