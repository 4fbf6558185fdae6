"""The ASGI application: one route module per protocol; thin, it parses and delegates."""
