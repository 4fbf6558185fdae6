"""The wire models' value types refuse bad values when a message is decoded."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from nixfarm.nix.compression import EXTENSIONS
from nixfarm.wire.caches import MissingRequest, PathInfo
from nixfarm.wire.jobs import SecretCreate
from nixfarm.wire.values import Compression

_PATH = "/nix/store/0c2ayd9kdn6ry2g4q3mpwkd1rcdxvm1k-hello-2.12"
_HASH = "sha256:1b1xmjnvl5b4xz6xvm9i2fbn7wfvbv5hm9kyc4bwb9q3gyiyc0xp"


def _info(**fields: object) -> str:
    import json

    return json.dumps({"store_path": _PATH, "nar_hash": _HASH, "nar_size": 120, **fields})


def test_a_good_path_info_decodes_as_sent() -> None:
    info = PathInfo.model_validate_json(_info(references=[_PATH.rsplit("/", 1)[1]],
                                              compression="xz"))
    assert info.store_path == _PATH and info.nar_hash == _HASH
    assert info.compression == "xz"


@pytest.mark.parametrize(("field", "value", "says"), [
    ("store_path", "/nix/store/" + "e" * 32 + "-hello", "is not a valid store path"),
    ("store_path", "/etc/passwd", "is not a store path"),
    ("nar_hash", "sha256:xyz", "sha256:xyz"),
    ("nar_hash", "md5:" + "0" * 32, "expected sha256"),
    ("references", ["../../escape"], "is not a store path"),
    ("deriver", "0c2ayd9kdn6ry2g4q3mpwkd1rcdxvm1k-.drv", "must not start with a dot"),
    ("compression", "gzip", "'gzip' is not a compression nixfarm knows"),
    ("nar_size", -1, "greater than or equal to 0"),
])
def test_a_bad_value_is_refused_naming_its_field(field: str, value: object, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PathInfo.model_validate_json(_info(**{field: value}))
    error = caught.value.errors()[0]
    assert error["loc"][0] == field
    assert says in error["msg"]


def test_missing_paths_are_store_paths() -> None:
    assert MissingRequest(paths=[_PATH]).paths == [_PATH]
    with pytest.raises(ValidationError, match="is not a store path"):
        MissingRequest.model_validate({"paths": ["hello"]})


def test_a_secret_value_is_base64() -> None:
    good = base64.b64encode(b"secret").decode()
    assert SecretCreate(name="key", kind="file", data=good).data == good
    for bad in ("not base64!", "\x80abc"):
        with pytest.raises(ValidationError, match="not valid base64"):
            SecretCreate.model_validate({"name": "key", "kind": "file", "data": bad})


def test_compressions_are_what_the_nar_code_knows() -> None:
    from pydantic import TypeAdapter

    schema = TypeAdapter(Compression).json_schema()
    assert set(schema["enum"]) == set(EXTENSIONS)
