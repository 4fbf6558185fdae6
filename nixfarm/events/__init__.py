"""Publish/subscribe for wake-ups and live log fan-out (in-process or Redis)."""
