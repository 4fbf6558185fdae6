"""Sandboxes for jobs: the ``Sandbox`` protocol (base) and its implementations (bwrap, vm)."""

from nixfarm.runner.sandbox.base import (
    BUILD_HOME,
    BUILD_UID,
    BUILD_USER,
    DiskImage,
    Image,
    LineCallback,
    NixClosure,
    RootDir,
    Sandbox,
    SandboxError,
    SandboxSpec,
    SandboxTimeout,
)
from nixfarm.runner.sandbox.bwrap import BwrapSandbox

__all__ = [
    "BUILD_HOME",
    "BUILD_UID",
    "BUILD_USER",
    "BwrapSandbox",
    "DiskImage",
    "Image",
    "LineCallback",
    "NixClosure",
    "RootDir",
    "Sandbox",
    "SandboxError",
    "SandboxSpec",
    "SandboxTimeout",
]
