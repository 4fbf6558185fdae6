"""Ephemeral builders: cloud (or local) machines that netboot into a runner, enroll,
take their pool's jobs, push to its caches and are destroyed (docs/builders.md).

    base.py        the provider Protocol, Instance and InstanceSpec, the tags
    providers.py   which provider a pool uses (one factory)
    vultr.py       Vultr API v2
    enrollment.py  one-time enrollment tokens, traded for a runner credential
    service.py     builder records: create, destroy, decisions, what the API shows
    autoscaler.py  the background pass: scale from queue depth, lifecycle, the reaper
"""
