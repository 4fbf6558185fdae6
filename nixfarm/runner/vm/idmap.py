"""An image's tree for virtiofsd as files of its own: an idmapped, read-only mount.

Why: the guest lays an overlay over the image's tree (``guest/init``), so that the
job can change its root with the changes on its own disk. overlayfs opens the files
of its lower layer with O_NOATIME when its mounter (the guest's root) owns them or
has CAP_FOWNER, which it does; the open reaches virtiofsd, which runs as an
unprivileged host user (``vm.qemu``), and the host's kernel allows O_NOATIME only to
a file's owner: on the image's files, which the host's root owns, virtiofsd got
EPERM. So a root runner shows virtiofsd the image through an idmapped mount on which
the files of uid/gid 0 are the user virtiofsd runs as (root in its user namespace):
its opens pass, and the guest sees them owned by root (before, by 65534, the
overflow id) as the image has them. Files of other owners keep their overflow id.

It is safe because the mount is read-only, and locked so in virtiofsd's less
privileged namespaces: being the files' owner lets virtiofsd chmod, chown or touch
none of them (EROFS). It exists only in a mount namespace made for virtiofsd (a
slave of the one it is started from: what the Nix store's holder binds later still
arrives, ``vm.nixguest``) and goes with it; the host never sees it.

Other ways, weighed (docs/vm.md): virtiofsd with CAP_FOWNER on the host would have
to run outside a user namespace, with a capability over every file it reaches; a
guest overlay mounted by credentials without CAP_FOWNER (so that overlayfs drops
O_NOATIME) does every later chmod and utime of a copied-up file of root's with
those credentials, which fail (tried: EPERM); copying the image's top level into the guest costs a
copy per boot. A runner that is not root needs none of it: its images are its own
files, virtiofsd's user.

Run as ``python3 idmap.py HOST_UID [SOURCE TARGET]... -- COMMAND...`` (a process of its
own: it leaves its mount namespace for a new one), as root; it execs COMMAND. A Nix
client's host files (``vm.nixguest``) are mapped so too, one mount each: the guest's
overlay opens them as it does the image's.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence
from pathlib import Path

HELPER = Path(__file__).resolve()

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_REC = 0x4000
_MS_SLAVE = 1 << 19
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = 0o2000000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_IDMAP = 0x100000
# x86_64 syscall numbers (the VM sandbox runs there only).
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def command(host_uid: int, mounts: Sequence[tuple[Path, Path]]) -> list[str]:
    """The command prefix that starts what follows with each (source, target) of
    ``mounts`` (a directory or a file) mounted at its target, mapped."""
    return [sys.executable, "-I", "-S", str(HELPER), str(host_uid),
            *(str(path) for pair in mounts for path in pair), "--"]


def _check(result: int, what: str) -> int:
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")
    return result


def _user_namespace(libc: ctypes.CDLL, host_uid: int) -> int:
    """A descriptor of a new user namespace whose 0 is ``host_uid`` (uid and gid)."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    child = os.fork()
    if child == 0:
        status = 0 if libc.unshare(_CLONE_NEWUSER) == 0 else 1
        os.write(ready_w, b"x")
        os.read(done_r, 1)
        os._exit(status)
    try:
        os.read(ready_r, 1)
        Path(f"/proc/{child}/uid_map").write_text(f"0 {host_uid} 1\n")
        Path(f"/proc/{child}/setgroups").write_text("deny\n")
        Path(f"/proc/{child}/gid_map").write_text(f"0 {host_uid} 1\n")
        return os.open(f"/proc/{child}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.write(done_w, b"x")
        os.waitpid(child, 0)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)


def mount_mapped(mounts: Sequence[tuple[Path, Path]], host_uid: int) -> None:
    """In a new mount namespace of this process: each source at its target, read-only,
    its uid/gid 0 shown as ``host_uid``."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    _check(libc.unshare(_CLONE_NEWNS), "unshare")
    # A slave: mounts made here reach no other namespace; those of the namespace it
    # came from (the Nix store's holder) still arrive.
    _check(libc.mount(b"none", b"/", None, _MS_REC | _MS_SLAVE, None), "making / a slave")
    userns = _user_namespace(libc, host_uid)
    attr = _MountAttr(attr_set=_MOUNT_ATTR_IDMAP | _MOUNT_ATTR_RDONLY, userns_fd=userns)
    for source, target in mounts:
        tree = _check(libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, str(source).encode(),
                                   _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC), f"cloning {source}")
        _check(libc.syscall(_SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH, ctypes.byref(attr),
                            ctypes.sizeof(attr)), f"idmapping {source}")
        _check(libc.syscall(_SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, str(target).encode(),
                            _MOVE_MOUNT_F_EMPTY_PATH), f"mounting at {target}")
        os.close(tree)
    os.close(userns)


def main(argv: list[str]) -> None:
    if "--" not in argv:
        sys.exit("usage: idmap.py HOST_UID [SOURCE TARGET]... -- COMMAND...")
    end = argv.index("--")
    uid, paths, rest = argv[0], argv[1:end], argv[end + 1 :]
    if len(paths) % 2 or not rest:
        sys.exit("usage: idmap.py HOST_UID [SOURCE TARGET]... -- COMMAND...")
    pairs = [(Path(paths[i]), Path(paths[i + 1])) for i in range(0, len(paths), 2)]
    try:
        mount_mapped(pairs, int(uid))
    except OSError as e:
        sys.exit(f"nixfarm: cannot show the image to virtiofsd ({e.strerror}); "
                 "its file system must support idmapped mounts")
    os.execvp(rest[0], rest)


if __name__ == "__main__":
    main(sys.argv[1:])
