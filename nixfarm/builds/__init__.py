"""CI jobs in the style of builds.sr.ht: manifests, jobs, tasks, triggers, secrets.

``manifest`` reads and checks ``.build.yml`` manifests (the models are in
``manifest_models``, the located YAML loading in ``manifest_yaml``).
"""
