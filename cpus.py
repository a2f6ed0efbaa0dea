"""What this process may really use: CPUs (affinity, cgroup CPU quota) and memory.

os.cpu_count() reports the host's cores; inside `docker run --cpus 1.5` or
under `taskset` that over-counts, and over-subscribed OpenMP threads spin and
slow everything down. cgroup v1 and v2 are both read.
"""

import math
import os


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _ancestors(root, rel):
    """ROOT/REL, then each parent up to ROOT (a limit on any ancestor applies)."""
    parts = [p for p in rel.split("/") if p]
    return [os.path.join(root, *parts[:i]) for i in range(len(parts), -1, -1)]


def cgroup_cpu_limit(cgroup_root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """CPU quota in cores (a float), or None when there is no quota."""
    limits = []
    for line in (_read(proc_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            # cgroup v2: "max 100000" or "QUOTA PERIOD".
            for d in _ancestors(cgroup_root, rel):
                fields = (_read(os.path.join(d, "cpu.max")) or "").split()
                if len(fields) == 2 and fields[0] != "max":
                    limits.append(int(fields[0]) / int(fields[1]))
        elif "cpu" in controllers.split(","):
            # cgroup v1: the cpu controller's mount; inside a container the
            # container's own cgroup is mounted at the root, so REL may not exist.
            for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
                base = os.path.join(cgroup_root, mount)
                if not os.path.isdir(base):
                    continue
                for d in _ancestors(base, rel):
                    quota = _read(os.path.join(d, "cpu.cfs_quota_us"))
                    period = _read(os.path.join(d, "cpu.cfs_period_us"))
                    if quota and period and int(quota) > 0:
                        limits.append(int(quota) / int(period))
                break
    return min(limits) if limits else None


def usable_cpus(cgroup_root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """min(CPUs in our affinity mask, ceil(cgroup quota)), at least 1."""
    count = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if limit is not None:
        count = min(count, math.ceil(limit))
    return max(1, count)


def cgroup_memory_limit(cgroup_root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """The cgroup memory limit in bytes (v2 memory.max or v1 limit_in_bytes), or None."""
    limits = []
    for line in (_read(proc_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            names, dirs = ("memory.max",), _ancestors(cgroup_root, rel)
        elif "memory" in controllers.split(","):
            names, dirs = ("memory.limit_in_bytes",), _ancestors(
                os.path.join(cgroup_root, "memory"), rel
            )
        else:
            continue
        for d in dirs:
            for name in names:
                value = _read(os.path.join(d, name))
                # v1 reports "no limit" as a huge number (a page-rounded 2**63 - 1).
                if value and value.isdigit() and int(value) < 2**60:
                    limits.append(int(value))
    return min(limits) if limits else None
