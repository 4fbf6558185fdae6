"""One module per schema revision, applied in order by ``nixfarm.db.engine.migrate``."""
