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


def _cgroup_dirs(controller, v1_mounts, cgroup_root, proc_cgroup):
    """(version, directory) pairs where CONTROLLER's limits for this process may be.

    v2: our cgroup and its ancestors. v1: the same under the controller's
    mount; inside a container the container's own cgroup is mounted at the
    root, so the path named in /proc/self/cgroup may not exist there.
    """
    for line in (_read(proc_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            for d in _ancestors(cgroup_root, rel):
                yield 2, d
        elif controller in controllers.split(","):
            mounts = [os.path.join(cgroup_root, m) for m in v1_mounts]
            for base in [m for m in mounts if os.path.isdir(m)][:1]:
                for d in _ancestors(base, rel):
                    yield 1, d


def cgroup_cpu_limit(cgroup_root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """CPU quota in cores (a float), or None when there is no quota."""
    limits = []
    mounts = ("cpu", "cpu,cpuacct", "cpuacct,cpu")
    for version, d in _cgroup_dirs("cpu", mounts, cgroup_root, proc_cgroup):
        if version == 2:  # "max 100000" or "QUOTA PERIOD"
            fields = (_read(os.path.join(d, "cpu.max")) or "").split()
            quota, period = fields if len(fields) == 2 and fields[0] != "max" else (None, None)
        else:
            quota = _read(os.path.join(d, "cpu.cfs_quota_us"))
            period = _read(os.path.join(d, "cpu.cfs_period_us"))
        if quota and period and int(quota) > 0:
            limits.append(int(quota) / int(period))
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
    for version, d in _cgroup_dirs("memory", ("memory",), cgroup_root, proc_cgroup):
        value = _read(os.path.join(d, "memory.max" if version == 2 else "memory.limit_in_bytes"))
        # v1 reports "no limit" as a huge number (a page-rounded 2**63 - 1).
        if value and value.isdigit() and int(value) < 2**60:
            limits.append(int(value))
    return min(limits) if limits else None


def cgroup_oom_kills(cgroup_root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """How many processes the kernel's OOM killer has killed in our cgroup
    (v2 memory.events, v1 memory.oom_control: "oom_kill N"), or None."""
    counts = []
    for version, d in _cgroup_dirs("memory", ("memory",), cgroup_root, proc_cgroup):
        name = "memory.events" if version == 2 else "memory.oom_control"
        for line in (_read(os.path.join(d, name)) or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                counts.append(int(value))
        if counts:
            break  # our own cgroup's count, not an ancestor's
    return counts[0] if counts else None
