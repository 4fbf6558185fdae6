"""nixfarm: a self-hosted build farm for Nix users."""

__version__ = "0.1.0"
