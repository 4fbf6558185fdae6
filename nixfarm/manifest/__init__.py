"""Build manifests: the builds.sr.ht ``.build.yml`` format, plus a Nix cache.

A format, like ``nix/`` and ``oci/``: no I/O, no database. The server checks a
manifest when a job is submitted (``builds/``); the runner gets it back as data in
its assignment and runs it (``runner/``). ``loading`` turns text or data into a
checked ``Manifest`` (``models``), ``parsing`` is the located YAML stage, ``values``
the rules for single values, ``sources`` the ``sources`` entries, ``errors`` the
located problems.
"""

from nixfarm.manifest.errors import ManifestError, Problem
from nixfarm.manifest.loading import check_supported, load_manifest, manifest_from_data
from nixfarm.manifest.models import MAX_TASKS, Manifest, Source, Task, Trigger
from nixfarm.manifest.parsing import MAX_MANIFEST_BYTES

__all__ = [
    "MAX_MANIFEST_BYTES",
    "MAX_TASKS",
    "Manifest",
    "ManifestError",
    "Problem",
    "Source",
    "Task",
    "Trigger",
    "check_supported",
    "load_manifest",
    "manifest_from_data",
]
