"""The idle farm benchmark: how much CPU a farm with nothing to do uses.

    .venv/bin/python bench/idle_bench.py [--settle 20] [--seconds 60] [--runner-slots N]

Starts a real ``nixfarm up`` (Granian workers, nginx, SQLite, the embedded runner
long-polling for jobs), lets it settle, then reads the CPU time (user + system, from
``/proc/PID/stat``) of every process it started at the start and at the end
of ``--seconds`` of wall time. Prints, per process and in all, the CPU used as a
percentage of one CPU. Nothing is submitted: what it measures is the farm's own
background work (schedules, lease expiry, the runner's long polls); with
``--runner-slots 0``, the server's alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import group_of, nixfarm_up, temp_dir

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of_tree(root: int) -> dict[int, tuple[str, float]]:
    """pid -> (command line, CPU seconds so far) of ``root`` and its descendants."""
    found: dict[int, tuple[int, str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        fields = stat[stat.rindex(")") + 2:].split()
        utime, stime = int(fields[11]), int(fields[12])
        found[int(entry.name)] = (int(fields[1]), cmdline.strip()[:70],
                                  (utime + stime) / _TICK)
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, (ppid, _, _) in found.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return {pid: (found[pid][1], found[pid][2]) for pid in tree if pid in found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runner-slots", type=int, default=None,
                        help="the embedded runner's slots (default: the farm's default)")
    args = parser.parse_args()
    env = {} if args.runner_slots is None else {
        "NIXFARM_JOBS__EMBEDDED_RUNNER_SLOTS": str(args.runner_slots)}
    with temp_dir("nixfarm-idle-") as tmp, nixfarm_up(tmp / "data", env=env) as farm:
        time.sleep(args.settle)
        group = group_of(farm)
        before, started = _cpu_of_tree(group), time.monotonic()
        time.sleep(args.seconds)
        after, wall = _cpu_of_tree(group), time.monotonic() - started
    print(f"idle farm, {wall:.0f} s: CPU as % of one CPU")
    print("| process | CPU % |")
    print("|---|---|")
    total = 0.0
    for pid, (cmd, cpu) in sorted(after.items()):
        used = cpu - before.get(pid, (cmd, 0.0))[1]
        total += used
        print(f"| {cmd} | {100 * used / wall:.2f} |")
    print(f"| all | {100 * total / wall:.2f} |")


if __name__ == "__main__":
    main()
