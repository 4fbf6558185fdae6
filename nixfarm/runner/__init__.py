"""The runner: a job as an ordered list of steps, run in a sandbox (see steps, sandbox)."""
