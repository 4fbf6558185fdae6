"""Virtual machines for jobs: the parts of the ``vm`` sandbox (``sandbox/vm.py``).

    kernel    Debian's cloud kernel, fetched into the runner's directory, and our
              initramfs (busybox, modules, ``guest/init``, ``guest/agent``)
    modules   a kernel module's dependencies, read from its ELF ``.modinfo``
    vmlinux   the kernel uncompressed once, for a direct PVH boot
    cpio      the initramfs archive format
    accel     KVM where it really works, else TCG
    qemu      qemu's and virtiofsd's command lines, each confined by bubblewrap
    channel   the host's end of the guest agent's protocol (virtio-serial)
    nixguest  Nix in the guest: the job's proxy over a virtio-serial port, its view
              of the store as bind mounts (``guest/nixrelay.py`` is the guest's end)
    disk      the job's disk: everything a job writes, within its quota

See docs/vm.md for how a job's VM boots and what it costs.
"""
