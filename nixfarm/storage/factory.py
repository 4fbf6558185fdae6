"""Choose the object store from the settings, once, at start-up."""

from __future__ import annotations

from nixfarm.config import Settings
from nixfarm.errors import ConfigError
from nixfarm.storage.base import ObjectStore
from nixfarm.storage.fs import FilesystemStore
from nixfarm.storage.s3 import S3Store

# Settings an S3 store cannot do without. The endpoint may stay empty (AWS itself);
# credentials are required so that the farm never falls back to whatever ambient AWS
# credentials the host happens to have.
_REQUIRED_S3 = ("bucket", "access_key_id", "secret_access_key")


def open_store(settings: Settings) -> ObjectStore:
    """The ``ObjectStore`` that ``settings.storage`` describes.

    ``kind = "fs"`` opens ``settings.storage_path`` (creating it); ``kind = "s3"`` needs
    ``storage.bucket``, ``storage.access_key_id`` and ``storage.secret_access_key`` and
    raises ``ConfigError`` naming the first one missing.
    """
    storage = settings.storage
    if storage.kind == "fs":
        return FilesystemStore(settings.storage_path)
    for name in _REQUIRED_S3:
        if not getattr(storage, name):
            raise ConfigError(
                f"storage.{name} must be set when storage.kind is 's3'", key=f"storage.{name}"
            )
    return S3Store(
        bucket=storage.bucket,
        endpoint=storage.endpoint,
        region=storage.region,
        access_key_id=storage.access_key_id,
        secret_access_key=storage.secret_access_key,
        prefix=storage.prefix,
        allow_http=storage.endpoint.startswith("http://"),
    )
