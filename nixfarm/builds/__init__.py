"""CI jobs in the style of builds.sr.ht: jobs, tasks, logs, artifacts, triggers, secrets,
and the runner protocol's service (``runners``). Manifests are their own format, in
``nixfarm.manifest``."""
