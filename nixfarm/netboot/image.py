"""The netboot image: Debian's cloud kernel and one initramfs holding a whole builder.

What is in it, all taken from Debian's packages:

- the kernel (``linux-image-cloud-amd64``, fetched with ``apt-get download`` and
  unpacked with ``dpkg-deb -x``: ``nixfarm.runner.vm.kernel``, as the VM sandbox does)
  and the modules a builder needs (virtio over PCI, the network card and disks,
  dm-crypt for the encrypted swap, fw_cfg for the local provider's user data, tun for
  jobs with network);
- the programs a builder runs, from the host's installed Debian packages (``nix-bin``,
  ``bubblewrap``, ``slirp4netns``, ``util-linux``, ``dmsetup``, ``git``, ``tar``,
  ``python3.11``, ``busybox-static``), each with exactly the shared libraries ``ldd``
  says it loads;
- Python's standard library (without tests, IDLE, tkinter, the build configuration)
  and the site-packages the runner imports (found by importing it in a child process),
  with nixfarm itself;
- our ``init`` (``guest/init``): see ``bootstrap``.

The archive is written uncompressed (the kernel would spend seconds decompressing it
under TCG, and it crosses a loopback or a data centre's network), ~150 MB.

Key: a hash of the inputs (the kernel's release, every copied file's path, size and
modification time, our guest files, the Nix options written into it), so a new
package, a changed nixfarm or other options make a new image, and nothing else does.
Images live in ``<data dir>/netboot/<key>/`` (``vmlinuz``, ``initrd``); older ones are
removed when a new one is made.

    image = await netboot_image(data_dir / "netboot", nix_options)
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import nixfarm
from nixfarm.errors import NixfarmError
from nixfarm.runner.libraries import shared_libraries
from nixfarm.runner.vm.cpio import CpioWriter
from nixfarm.runner.vm.kernel import PACKAGE, kernel_tree
from nixfarm.runner.vm.modules import ModuleError, load_order, module_index

GUEST = Path(__file__).resolve().parent / "guest"
#: Modules loaded at boot, in this order after their dependencies.
MODULES = (
    "virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "sd_mod",
    "dm_crypt", "ecb", "xts", "qemu_fw_cfg", "tun",
)  # fmt: skip
#: Programs (and what each needs of Debian: the packages they come from).
PROGRAMS = (
    "/usr/bin/nix", "/usr/bin/bwrap", "/usr/bin/slirp4netns", "/usr/bin/setpriv",
    "/usr/bin/nsenter", "/usr/bin/unshare", "/usr/bin/prlimit", "/usr/sbin/dmsetup",
    "/usr/bin/git",
    "/usr/lib/git-core/git-remote-http", "/usr/bin/tar", "/usr/bin/python3.11",
    "/usr/bin/bash",
    # coreutils' env, before busybox's applet: the runner starts every task through
    # `env --default-signal` (busybox's env has no such option).
    "/usr/bin/env",
)  # fmt: skip
#: Scripts from the host's packages: ldd (glibc's, a bash script) finds the libraries
#: of the Nix client the runner gives each Nix job.
SCRIPTS = ("/usr/bin/ldd",)
NIX_LINKS = ("nix-build", "nix-channel", "nix-collect-garbage", "nix-copy-closure",
             "nix-daemon", "nix-env", "nix-hash", "nix-instantiate", "nix-prefetch-url",
             "nix-shell", "nix-store")  # fmt: skip
BUSYBOX = Path("/bin/busybox")
STDLIB = Path(f"/usr/lib/python{sys.version_info.major}.{sys.version_info.minor}")
_STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip",
                "pydoc_data", "site-packages", "dist-packages", "unittest", "venv"}
#: Not needed, and large: Windows launchers, static archives, zstandard's cffi backend
#: (its C backend is what it loads).
_SKIP_FILES = (".exe", ".a", "_cffi.cpython-311-x86_64-linux-gnu.so")
#: Packages the runner loads lazily (not seen by the import probe) that it needs.
_EXTRA_PACKAGES = ("httpcore", "h11", "certifi", "sniffio", "anyio", "idna")
_BUILD_USERS = 8
#: The largest Nix package source copied into the image.
MAX_NIX_SOURCE = 64 << 20
_locks: dict[Path, asyncio.Lock] = {}


class ImageError(NixfarmError):
    """The netboot image could not be made; ``message`` says what is missing."""


@dataclass(frozen=True)
class NetbootImage:
    kernel: Path
    initrd: Path
    #: The hash of its inputs: the name of its directory.
    key: str
    #: The kernel's release.
    version: str


async def netboot_image(root: Path, nix_options: Mapping[str, str] | None = None,
                        nix_source: Path | None = None,
                        package: str = PACKAGE) -> NetbootImage:
    """The image for this host's packages and nixfarm, made now if it is not in ``root``.

    ``nix_options`` go into its nix.conf and to its runner; ``nix_source`` (the
    server's Nix package source, a directory of at most ``MAX_NIX_SOURCE`` bytes) is
    copied in, for ``image: nix`` jobs' packages.
    """
    async with _locks.setdefault(root, asyncio.Lock()):
        tree = await kernel_tree(root / "kernel", package)
        return await asyncio.to_thread(_image, tree, root, dict(nix_options or {}), nix_source)


def _image(tree: Path, root: Path, nix_options: dict[str, str],
           nix_source: Path | None) -> NetbootImage:
    kernel = sorted(tree.glob("boot/vmlinuz-*"))[-1]
    version = kernel.name.removeprefix("vmlinuz-")
    plan = _plan(tree, version, nix_options)
    if nix_source is not None:
        _add_nix_source(plan, nix_source)
    digest = hashlib.sha256(version.encode())
    for name in sorted(plan.files):
        source, mode = plan.files[name]
        if isinstance(source, Path):
            st = source.stat()
            digest.update(f"\0{name}\0{source}\0{st.st_size}\0{st.st_mtime_ns}\0{mode:o}".encode())
        else:
            digest.update(f"\0{name}\0{mode:o}\0".encode() + source)
    for name, target in sorted(plan.links.items()):
        digest.update(f"\0{name}->{target}".encode())
    key = digest.hexdigest()[:20]
    where = root / key
    image = NetbootImage(where / "vmlinuz", where / "initrd", key, version)
    if image.kernel.exists() and image.initrd.exists():
        return image
    staging = root / f".{key}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(kernel, staging / "vmlinuz")
    with (staging / "initrd").open("wb") as out:
        _write(CpioWriter(out), plan)
    (staging / "inputs.json").write_text(json.dumps(
        {"kernel": version, "files": len(plan.files), "nix_options": nix_options}, indent=1))
    shutil.rmtree(where, ignore_errors=True)
    staging.rename(where)
    for old in root.iterdir():  # one image is enough: the others are stale
        if old.is_dir() and old != where and old.name != "kernel" and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return image


@dataclass
class _Plan:
    #: archive name -> (a host file or the bytes, mode)
    files: dict[str, tuple[Path | bytes, int]]
    #: archive name -> symlink target
    links: dict[str, str]


def _plan(tree: Path, version: str, nix_options: dict[str, str]) -> _Plan:
    files: dict[str, tuple[Path | bytes, int]] = {}
    links: dict[str, str] = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib",
                             "lib64": "usr/lib64"}
    try:
        index = module_index(tree / "lib/modules" / version)
        order = load_order(MODULES, index)
    except ModuleError as e:
        raise ImageError(f"Kernel {version}: {e.message}") from e
    for name in order:
        files[f"usr/lib/nixfarm-modules/{name}.ko"] = (index[name], 0o644)
    files["usr/lib/nixfarm-modules/order"] = ("".join(f"{n}\n" for n in order).encode(), 0o644)

    missing = [p for p in (*PROGRAMS, *SCRIPTS, str(BUSYBOX)) if not Path(p).is_file()]
    if missing:
        raise ImageError(f"The netboot image needs {', '.join(missing)} (scripts/setup "
                         "installs the Debian packages they come from).")
    files["usr/bin/busybox"] = (BUSYBOX, 0o755)
    for program in PROGRAMS:
        files[_usr(program)] = (Path(program), 0o755)
    for script in SCRIPTS:
        files[_usr(script)] = (Path(script), 0o755)
    for link in NIX_LINKS:
        links[f"usr/bin/{link}"] = "nix"
    links["usr/bin/python3"] = "python3.11"
    # Nix starts its build hook for every build (there is no remote builder, but the
    # hook must exist): Debian's is a link to nix.
    links["usr/libexec/nix/build-remote"] = "../../bin/nix"

    site = _site_packages()
    objects: list[Path] = [Path(p) for p in PROGRAMS]
    for path in _tree_files(STDLIB, _STDLIB_SKIP):
        files[_usr(str(path))] = (path, 0o644)
        if path.suffix == ".so":
            objects.append(path)
    for top, path in site:
        for file in _tree_files(path, set()) if path.is_dir() else [path]:
            name = f"usr/lib/nixfarm/site/{file.relative_to(top)}"
            files[name] = (file, 0o644)
            if ".so" in file.suffixes:
                objects.append(file)
    for library in _libraries(objects):
        files[_usr(str(library[0]))] = (library[1], 0o755)

    files["init"] = ((GUEST / "init").read_bytes(), 0o755)
    files["usr/lib/nixfarm/udhcpc.script"] = ((GUEST / "udhcpc.script").read_bytes(), 0o755)
    files["etc/passwd"] = (_passwd(), 0o644)
    files["etc/group"] = (_group(), 0o644)
    files["etc/nsswitch.conf"] = (b"passwd: files\ngroup: files\nhosts: files dns\n", 0o644)
    files["etc/hosts"] = (b"127.0.0.1 localhost\n", 0o644)
    certs = Path("/etc/ssl/certs/ca-certificates.crt")
    if certs.is_file():
        files["etc/ssl/certs/ca-certificates.crt"] = (certs, 0o644)
    conf = {"build-users-group": "nixbld", "sandbox": "true", "sandbox-fallback": "false",
            **nix_options}
    files["etc/nix/nix.conf"] = ("".join(f"{k} = {v}\n" for k, v in conf.items()).encode(),
                                 0o644)
    files["etc/nixfarm/nix-options.json"] = (json.dumps(nix_options).encode(), 0o644)
    return _Plan(files, links)


def _add_nix_source(plan: _Plan, source: Path) -> None:
    total = 0
    for file in _tree_files(source, {".git"}):
        total += file.stat().st_size
        if total > MAX_NIX_SOURCE:
            raise ImageError(f"The Nix package source {source} is larger than "
                             f"{MAX_NIX_SOURCE >> 20} MiB: too large for the netboot image.")
        plan.files[f"usr/lib/nixfarm/nix-source/{file.relative_to(source)}"] = (file, 0o644)


def _usr(path: str) -> str:
    """The archive name of a host path, with Debian's merged /usr made explicit."""
    for top in ("/lib64/", "/lib/", "/bin/", "/sbin/"):
        if path.startswith(top):
            return "usr" + path
    return path.lstrip("/")


def _tree_files(root: Path, skip: set[str]) -> Iterable[Path]:
    for directory, dirs, names in os.walk(root):
        here = Path(directory)
        dirs[:] = sorted(d for d in dirs if not (here == root and d in skip)
                         and not d.startswith("config-"))
        for name in sorted(names):
            path = here / name
            if path.is_file() and not name.endswith(_SKIP_FILES):
                yield path


def _site_packages() -> list[tuple[Path, Path]]:
    """(site dir, package dir or module file) of what the runner imports, and nixfarm."""
    probe = (
        "import sys, json\n"
        "import nixfarm.cli.main, nixfarm.cli.runner, nixfarm.runner.agent, "
        "nixfarm.runner.nixd, nixfarm.runner.protocol, nixfarm.runner.roots, "
        "nixfarm.runner.sandbox.choice, nixfarm.runner.steps, nixfarm.runner.cachepush, "
        "nixfarm.runner.logship, nixfarm.netboot.bootstrap, httpx\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise ImageError(f"Importing the runner failed: {done.stderr.strip()[-300:]}")
    tops = set(json.loads(done.stdout)) | set(_EXTRA_PACKAGES)
    found: list[tuple[Path, Path]] = []
    for top in sorted(tops):
        if top in sys.stdlib_module_names or top.startswith("__") or top == "_distutils_hack":
            continue
        spec = importlib.util.find_spec(top)
        if spec is None or spec.origin in ("built-in", "frozen"):
            continue
        if spec.origin is None:  # a namespace package (ruamel): each of its directories
            found += [(Path(d).parent, Path(d)) for d in spec.submodule_search_locations or ()]
            continue
        origin = Path(spec.origin)
        if top in sys.stdlib_module_names:
            continue
        if top == "nixfarm":
            found.append((Path(nixfarm.__file__).parent.parent, Path(nixfarm.__file__).parent))
        elif origin.name == "__init__.py":
            found.append((origin.parent.parent, origin.parent))
        else:
            found.append((origin.parent, origin))
    return found


def _libraries(objects: Iterable[Path]) -> list[tuple[Path, Path]]:
    """(path ldd names, its real file) of every library the objects load, NSS too."""
    # Static programs (busybox) and scripts are among them: ldd passes over those.
    found = [Path(p) for p in shared_libraries(list(objects), check=False)]
    if not any(p.name == "libc.so.6" for p in found):
        raise ImageError("ldd named no libc for the builder's programs.")
    return sorted((p, p.resolve()) for p in found)


def _passwd() -> bytes:
    lines = ["root:x:0:0:root:/root:/bin/sh", "nobody:x:65534:65534:nobody:/nonexistent:/bin/false"]
    lines += [f"nixbld{i}:x:{30000 + i}:30000:Nix build user {i}:/var/empty:/bin/false"
              for i in range(1, _BUILD_USERS + 1)]
    return ("\n".join(lines) + "\n").encode()


def _group() -> bytes:
    members = ",".join(f"nixbld{i}" for i in range(1, _BUILD_USERS + 1))
    return f"root:x:0:\nnogroup:x:65534:\nnixbld:x:30000:{members}\n".encode()


def _write(archive: CpioWriter, plan: _Plan) -> None:
    names = sorted(set(plan.files) | set(plan.links))
    made: set[str] = set()
    for base in ("dev", "proc", "sys", "run", "tmp", "newroot", "nix", "root", "var",
                 "var/tmp", "usr", "usr/bin", "usr/sbin", "usr/lib", "usr/lib64"):
        archive.directory(base, 0o1777 if base in ("tmp", "var/tmp") else 0o755)
        made.add(base)
    archive.char_device("dev/console", 5, 1)
    for name in names:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in made and parent not in plan.links:
                archive.directory(parent)
                made.add(parent)
        if name in plan.links:
            archive.symlink(name, plan.links[name])
            continue
        source, mode = plan.files[name]
        if isinstance(source, Path):
            archive.file(name, source.read_bytes(), mode, mtime=int(source.stat().st_mtime))
        else:
            archive.file(name, source, mode)
    archive.close()
