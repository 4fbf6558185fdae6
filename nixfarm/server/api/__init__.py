"""The JSON API under /api/v1 (FastAPI routers; OpenAPI at /api/v1/openapi.json)."""
