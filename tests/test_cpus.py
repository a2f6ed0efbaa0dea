import os

from mnist_hogwild.core import cpus


def tree(tmp_path, files, proc_cgroup):
    for rel, text in files.items():
        path = tmp_path / "cg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "cgroup").write_text(proc_cgroup)
    return str(tmp_path / "cg"), str(tmp_path / "cgroup")


def test_cgroup_v2_quota(tmp_path):
    root, proc = tree(tmp_path, {"cpu.max": "150000 100000\n"}, "0::/\n")
    assert cpus.cgroup_cpu_limit(root, proc) == 1.5


def test_cgroup_v2_unlimited_and_nested_limit(tmp_path):
    root, proc = tree(
        tmp_path,
        {"cpu.max": "max 100000\n", "a/cpu.max": "max 100000\n", "a/b/cpu.max": "max 100000\n"},
        "0::/a/b\n",
    )
    assert cpus.cgroup_cpu_limit(root, proc) is None
    (tmp_path / "cg" / "a" / "cpu.max").write_text("50000 100000\n")
    assert cpus.cgroup_cpu_limit(root, proc) == 0.5


def test_cgroup_v1_quota_inside_a_container(tmp_path):
    # Docker on cgroup v1: /proc/self/cgroup names the host path, but the
    # container's own cgroup is what is mounted at /sys/fs/cgroup/cpu.
    root, proc = tree(
        tmp_path,
        {"cpu/cpu.cfs_quota_us": "250000\n", "cpu/cpu.cfs_period_us": "100000\n"},
        "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n",
    )
    os.rename(os.path.join(root, "cpu"), os.path.join(root, "cpu,cpuacct"))
    assert cpus.cgroup_cpu_limit(root, proc) == 2.5


def test_cgroup_v1_unlimited(tmp_path):
    root, proc = tree(
        tmp_path,
        {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
        "1:cpu:/\n0::/\n",
    )
    assert cpus.cgroup_cpu_limit(root, proc) is None


def test_usable_cpus_rounds_quota_up_and_honours_affinity(tmp_path):
    root, proc = tree(tmp_path, {"cpu.max": "50000 100000\n"}, "0::/\n")
    assert cpus.usable_cpus(root, proc) == 1
    root, proc = tree(tmp_path / "x", {"cpu.max": "max 100000\n"}, "0::/\n")
    assert cpus.usable_cpus(root, proc) == len(os.sched_getaffinity(0))


def test_memory_limit_v1_and_v2(tmp_path):
    root, proc = tree(tmp_path, {"memory.max": "314572800\n"}, "0::/\n")
    assert cpus.cgroup_memory_limit(root, proc) == 300 * 2**20
    root, proc = tree(tmp_path / "u", {"memory.max": "max\n"}, "0::/\n")
    assert cpus.cgroup_memory_limit(root, proc) is None
    root, proc = tree(
        tmp_path / "v1", {"memory/memory.limit_in_bytes": "9223372036854771712\n"}, "4:memory:/x\n"
    )
    assert cpus.cgroup_memory_limit(root, proc) is None
    (tmp_path / "v1" / "cg" / "memory" / "memory.limit_in_bytes").write_text("104857600\n")
    assert cpus.cgroup_memory_limit(root, proc) == 100 * 2**20
