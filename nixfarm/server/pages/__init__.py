"""The web UI's routes (HTML pages rendered from nixfarm/web/templates)."""
