"""Object storage: one ``ObjectStore`` protocol, a filesystem and an S3 implementation.

Callers take an ``ObjectStore`` (see ``base``); ``open_store(settings)`` picks the one
the configuration names.
"""

from nixfarm.storage.base import ObjectInfo, ObjectStore, ObjectStream, ObjectWriter
from nixfarm.storage.factory import open_store
from nixfarm.storage.fs import FilesystemStore
from nixfarm.storage.s3 import S3Store

__all__ = [
    "FilesystemStore",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStream",
    "ObjectWriter",
    "S3Store",
    "open_store",
]
