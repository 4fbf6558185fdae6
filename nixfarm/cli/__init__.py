"""The ``nixfarm`` command: one module per command group."""
