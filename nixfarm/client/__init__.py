"""The HTTP client side of nixfarm: what the CLI (and runners) use to talk to a server."""
