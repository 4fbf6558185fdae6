"""The netboot image ephemeral builders boot, and the bootstrap that runs in it.

    image.py      makes the image (kernel + one initramfs) from Debian's packages,
                  cached under the data directory, keyed by a hash of its inputs
    guest/init    the image's first process: scratch space, network, then bootstrap
    bootstrap.py  runs in the image: user data, enrollment, the console shipper, the runner
    ipxe.py       the iPXE script and kernel command line the farm serves per builder

See docs/builders.md ("Netboot image", "Bootstrap").
"""
