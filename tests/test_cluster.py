"""Several machines: real two-node jobs on
127.0.0.1 (main.py --nnodes, which runs torchrun's launcher; gloo between
the nodes). The container form is tests/cluster_test.sh."""

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from mnist_hogwild.training import checkpoint
from mnist_hogwild.learn import data
from mnist_hogwild.learn import evaluation
from mnist_hogwild.cluster import launcher
from mnist_hogwild.commands import flags
from mnist_hogwild.core import loglines
from mnist_hogwild.cluster import cadence as sync_cadence
from mnist_hogwild.cluster import nodes
from mnist_hogwild.core.config import RunOptions
from conftest import MAIN, load_checkpoint, run_trainer, stop_group
from helpers import assert_same_weights
from procs import LineReader, Timeout


def test_launch_flags_are_not_passed_to_the_leaders():
    argv = ["--nnodes", "2", "--epochs", "3", "--rdzv-endpoint=h:1", "--max-restarts", "1", "-x"]
    assert flags.leader_argv(argv) == ["--epochs", "3", "-x"]
    argv = ["--verbose", "--rdzv-id", "j", "--local-addr=a", "--rdzv-conf", "k=v", "--resume"]
    assert flags.leader_argv(argv) == ["--resume"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(tmp_path, name, port, *flags, nnodes="2"):
    (tmp_path / name).mkdir(exist_ok=True)
    args = ["--nnodes", nnodes, "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test"]
    args += ["--num-processes", "1", "--threads-per-process", "1", "--sync-timeout", "15"]
    proc = subprocess.Popen(
        [sys.executable, MAIN, *args, *map(str, flags)],
        cwd=tmp_path / name,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    proc.out = LineReader(proc.stdout)
    return proc


def finish(nodes, timeout=180):
    """Every node's whole output once all have exited; a node still running
    after TIMEOUT fails the test with every node's output so far."""
    outs = []
    try:
        for proc in nodes:
            proc.wait(timeout=timeout)
            outs.append(proc.out.rest(timeout))
    except subprocess.TimeoutExpired:
        pytest.fail(f"a node still ran after {timeout} s:\n" + "\n---\n".join(map(so_far, nodes)))
    finally:
        for proc in nodes:
            stop_group(proc)
    return outs


def so_far(proc):
    """PROC's output until now (its leader, in a session of its own, may
    still hold the pipe open)."""
    try:
        proc.out.rest(1)
    except Timeout:
        pass
    return proc.out.text()


def test_a_port_taken_by_something_else_than_a_rendezvous_fails_at_once_naming_it():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        assert launcher.listener_in_this_pid_namespace(port)
        started = time.monotonic()
        with pytest.raises(launcher.UsageError, match=f"port {port} is taken .* by something else"):
            launcher.check_port("127.0.0.1", port)
        assert time.monotonic() - started < 10


def test_a_port_held_by_another_nodes_rendezvous_store_is_joined():
    """Several nodes on one machine (this suite's own cluster tests): the
    second finds the port held by the first's store, which is not an error."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    assert launcher.answers_as_store("127.0.0.1", store.port)
    launcher.check_port("127.0.0.1", store.port)
    port = free_port()
    assert not launcher.listener_in_this_pid_namespace(port)
    launcher.check_port("127.0.0.1", port)


def test_a_joined_node_reads_an_open_rendezvous_promptly_and_a_complete_one_at_torchs_pace():
    """The rendezvous poll of launcher.prompt_rendezvous, in the handler that
    torchrun builds: it reaches into torch's private names, so a torch that
    renames them fails here rather than silently costing every job a second."""
    from torch.distributed.elastic.rendezvous import dynamic_rendezvous  # noqa: PLC0415
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import (  # noqa: PLC0415
        C10dRendezvousBackend,
    )

    assert launcher.prompt_rendezvous() and launcher.prompt_rendezvous()  # once is enough
    store = torch.distributed.HashStore()
    handler = dynamic_rendezvous.DynamicRendezvousHandler.from_backend(
        "job", store, C10dRendezvousBackend(store, "job"), min_nodes=2, max_nodes=2
    )
    holder = handler._state_holder
    holder.sync()
    assert holder._cache_duration == launcher.RENDEZVOUS_POLL < 1  # open: read promptly
    holder.state.complete = True
    holder.sync()
    assert holder._cache_duration == 1  # complete: torch's own cache
    started = time.monotonic()
    dynamic_rendezvous._delay(seconds=1)
    assert time.monotonic() - started < 1  # the poll between reads is capped too


@pytest.fixture
def job(tmp_path, data_dir):
    """Start two nodes (the same flags) on a free port; returns a starter."""

    def start(*flags, nnodes="2", data=data_dir):
        port = free_port()
        common = ["--data-dir", data, "--sync-every", "10", "--log-interval", "10", *flags]
        return [start_node(tmp_path, n, port, *common, nnodes=nnodes) for n in ("a", "b")]

    return start


@pytest.mark.slow
def test_two_nodes_train_one_pass_per_epoch_and_end_identical(tmp_path, job, data_dir):
    outs = finish(job("--epochs", "2"))
    assert all("Traceback" not in out for out in outs), outs
    a = load_checkpoint(tmp_path / "a" / "model_checkpoint.pth")
    b = load_checkpoint(tmp_path / "b" / "model_checkpoint.pth")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 0)
    # Right after the last sync every node holds bitwise the same model and momentum.
    assert_same_weights(a, b)
    assert a["metrics"] == b["metrics"]
    # Measured 80.4% (one process per node makes it deterministic on one machine;
    # other CPUs may round differently). Chance is 10%.
    assert a["metrics"][-1]["accuracy_percent"] >= 75
    # Each node evaluated half the test set; their sums are the whole set's.
    model, _ = checkpoint.load_model(str(tmp_path / "a" / "model_checkpoint.pth"))
    test = data.load_split(data.prepare(data_dir, "mnist", log=print)["test"])
    whole = evaluation.evaluate(model, test, "mnist", 1000)
    assert a["metrics"][-1]["accuracy_percent"] == 100 * whole.accuracy
    # (the loss only to float32 rounding: the batches summed differ)
    assert a["metrics"][-1]["test_loss"] == pytest.approx(whole.test_loss, rel=1e-6)
    # The two nodes' batches add up to one pass per epoch (2,560 images less the
    # twelfth held out for validation: 37 batches of 64).
    batches = [int(out.split(" batches this run")[0].rsplit("(", 1)[1]) for out in outs]
    assert sum(batches) == 2 * a["batches_per_epoch"] == 2 * 37


@pytest.mark.slow
def test_an_auto_cadence_changes_k_alike_on_every_node(tmp_path, big_data_dir, job):
    outs = finish(job("--epochs", "1", "--sync-every", "auto", data=big_data_dir))
    assert all("Traceback" not in out for out in outs), outs
    a = load_checkpoint(tmp_path / "a" / "model_checkpoint.pth")
    b = load_checkpoint(tmp_path / "b" / "model_checkpoint.pth")
    # Boundaries that did not pair up would have failed the syncs; the models
    # are equal right after the last one.
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (1, 0)
    assert_same_weights(a, b)
    ks = [[r["k"] for r in loglines.parse_lines("cadence", out)] for out in outs]
    assert ks[0] == ks[1] and len(ks[0]) == 1, outs
    assert 1 <= ks[0][0] <= sync_cadence.AUTO_MOST


@pytest.mark.slow
def test_a_stop_on_one_node_stops_both_at_the_same_batch_and_resume_goes_on(
    tmp_path, big_data_dir, job
):
    nodes = job("--epochs", "2", data=big_data_dir)
    proc = nodes[1]
    proc.out.wait_for(lambda line: line.startswith("epoch 1/2 ["), 120)
    # Ctrl-C in a terminal: SIGINT to the launcher's whole process group. The
    # leader runs in a session of its own, so it hears it once, from the launcher.
    os.killpg(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    outs = finish(nodes, timeout=30)
    assert time.monotonic() - sent < 10
    assert outs[1].count("received SIGINT") == 2 and "again" not in outs[1], outs[1]
    # Every node exits 128 + the signal: stopped, resumable (0 means complete).
    assert [p.returncode for p in nodes] == [130, 130], outs
    assert all("Traceback" not in out for out in outs), outs
    a = load_checkpoint(tmp_path / "a" / "model_checkpoint.pth")
    b = load_checkpoint(tmp_path / "b" / "model_checkpoint.pth")
    per_epoch = a["batches_per_epoch"]  # (20,000 images less the twelfth held out: 287)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) and 0 < a["step"] < per_epoch == 287
    assert_same_weights(a, b)
    # A node with an empty volume joins: it gets the other's checkpoint.
    os.remove(tmp_path / "b" / "model_checkpoint.pth")
    outs = finish(job("--epochs", "2", "--resume", data=big_data_dir))
    assert all(f"at epoch 1, batch {a['step']}/{per_epoch}" in out for out in outs), outs
    b = load_checkpoint(tmp_path / "b" / "model_checkpoint.pth")
    assert (b["epoch"], b["step"], len(b["metrics"])) == (2, 0, 2)
    # A two-node checkpoint resumes on one machine too.
    proc = run_trainer("--data-dir", big_data_dir, "--epochs", "3", "--resume", cwd=tmp_path / "a")
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(tmp_path / "a" / "model_checkpoint.pth")["epoch"] == 3


@pytest.mark.slow
def test_nodes_sharing_one_folder_share_its_checkpoint_stop_and_resume_together(
    tmp_path, big_data_dir
):
    # The usual cluster set-up: one shared folder (an NFS home, a ReadWriteMany
    # volume), every node with README's command and the default --checkpoint.
    def start(*flags):
        port = free_port()
        common = ["--data-dir", big_data_dir, "--sync-every", "10", "--epochs", "2", *flags]
        return [start_node(tmp_path, "shared", port, *common) for _ in range(2)]

    nodes = start()
    nodes[0].out.wait_for(lambda line: line.startswith("epoch 1/2 ["), 120)
    os.killpg(nodes[0].pid, signal.SIGINT)
    outs = finish(nodes, timeout=60)
    assert [p.returncode for p in nodes] == [130, 130], outs
    assert sum("node 0 writes model_checkpoint.pth (a folder they share)" in o for o in outs) == 1
    assert all("Traceback" not in out and "in use by another run" not in out for out in outs)
    saved = load_checkpoint(tmp_path / "shared" / "model_checkpoint.pth")
    assert saved["epoch"] == 0 and 0 < saved["step"] < saved["batches_per_epoch"] == 287
    resumed = start("--resume")
    outs = finish(resumed)
    assert [p.returncode for p in resumed] == [0, 0], outs
    assert all(f"at epoch 1, batch {saved['step']}/287" in out for out in outs), outs
    assert load_checkpoint(tmp_path / "shared" / "model_checkpoint.pth")["epoch"] == 2
    names = sorted(p.name for p in (tmp_path / "shared").iterdir())
    expected = [".model_checkpoint.lock", "model_checkpoint.best.pth"]
    expected += ["model_checkpoint.metrics.csv", "model_checkpoint.metrics.jsonl"]
    expected += ["model_checkpoint.models", "model_checkpoint.pth"]
    if importlib.util.find_spec("tensorboard") is not None:  # (its events, when installed)
        expected.append("model_checkpoint.tensorboard")
    assert names == sorted(expected)


@pytest.mark.slow
def test_a_lost_node_leaves_an_elastic_job_to_finish_on_the_survivor(tmp_path, job):
    nodes = job("--epochs", "3", "--resume", "--max-restarts", "2", nnodes="1:2")
    nodes[0].out.wait_for(lambda line: line.startswith("epoch 1/3: test loss"), 180)
    # Kill the node that does not host the rendezvous (c10d cannot lose that one).
    victim = nodes[1] if not hosts_rendezvous(nodes[1]) else nodes[0]
    survivor = nodes[0] if victim is nodes[1] else nodes[1]
    # As docker kill or a dead machine would: the launcher, its leader (in a
    # session of its own), the leader's workers, all at once.
    for pid in [victim.pid, *leaders_of(victim.pid)]:
        os.killpg(pid, signal.SIGKILL)
    out = finish([survivor], timeout=120)[0]
    stop_group(victim)
    assert survivor.returncode == 0, out
    assert "lost contact with the other nodes" in out
    name = "a" if survivor is nodes[0] else "b"
    final = load_checkpoint(tmp_path / name / "model_checkpoint.pth")
    assert (final["epoch"], final["step"], len(final["metrics"])) == (3, 0, 3)


@pytest.mark.slow
def test_a_leader_that_dies_is_restarted_and_both_nodes_finish_together(tmp_path, job):
    """torchrun's agent restarts a dead leader, and the other node's agent
    restarts its own to re-form the job: the new leaders must meet in a
    store of their own. With torch's shared agent store they found the
    previous round's addresses there (the nodes' restart counts differ:
    only one of them failed), and the new round failed or hung."""
    nodes = job("--epochs", "3", "--resume", "--max-restarts", "2")
    nodes[0].out.wait_for(lambda line: line.startswith("epoch 1/3: test loss"), 180)
    (victim,) = leaders_of(nodes[1].pid)
    os.killpg(victim, signal.SIGKILL)  # the leader and its workers (a session of their own)
    outs = finish(nodes, timeout=180)
    assert [n.returncode for n in nodes] == [0, 0], outs
    assert all("Traceback" not in out for out in outs), outs
    a = load_checkpoint(tmp_path / "a" / "model_checkpoint.pth")
    b = load_checkpoint(tmp_path / "b" / "model_checkpoint.pth")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (3, 0)
    # torch's agent said "failed (exitcode: -9)" and more in its own format
    # (E1129 12:00:00.000 ...]); without --verbose only the project's lines.
    assert not any(re.match(r"[EWI]\d{4} ", line) for out in outs for line in out.splitlines())
    # The premise: both nodes started a second leader, which resumed.
    assert all(out.count("\nresuming ") >= 1 and out.count("training mnist") >= 2 for out in outs)


def hosts_rendezvous(proc):
    """Whether this launcher process listens on the rendezvous port (it hosts the store)."""
    out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
    return f"pid={proc.pid}," in out


def leaders_of(pid):
    """The leader started by a launcher runs in its own session: its pid, to kill it too."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_without_torchrun_the_node_is_a_one_node_job(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    options = RunOptions()
    assert isinstance(nodes.from_env(options), nodes.LocalNode)
    assert isinstance(nodes.from_env(options, {"WORLD_SIZE": "1", "RANK": "0"}), nodes.LocalNode)
    node = nodes.from_env(options, environ={"WORLD_SIZE": "3", "RANK": "2"})
    assert (node.rank, node.world, node.leader) == (2, 3, False)
    assert torch.distributed.is_available()


def test_the_one_node_job_returns_what_it_is_given():
    local = nodes.LocalNode()
    assert local.synchronise(15, True, at_end=False) == (15, True)
    assert local.sum_and_max(1.5, 2.0) == (1.5, 2.0)
    assert local.share_evaluation({"epoch": 1}, 0) == ({"epoch": 1}, 0)
    assert local.shard("the test set") == "the test set"
    assert local.combine_evaluation("a result", None) == ("a result", 0)
    assert local.boundaries(None, 0, 0, 40) == [40]
    assert local.agree_on_job({"--seed": 1}, 15) == 15


def test_the_nodes_evaluate_disjoint_shares_that_make_the_whole_test_set():
    split = data.Split(torch.arange(7 * 4).view(7, 2, 2), torch.arange(7))
    for world in (1, 2, 3, 4, 8):
        shares = [nodes.ClusterNode(r, world, RunOptions()).shard(split) for r in range(world)]
        assert torch.equal(torch.cat([s.labels for s in shares]), split.labels)
        assert torch.equal(torch.cat([s.images for s in shares]), split.images)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_a_fixed_cadence_pauses_every_k_batches_and_at_the_end():
    cadence = sync_cadence.Cadence(10)
    # an epoch of this node's batches 100..135, of which 35 every node has
    assert list(cadence.boundaries(100, 100, 35, 136)) == [110, 120, 130, 136]
    for boundary in (110, 120):
        cadence.upcoming = boundary
        cadence.agreed([-5.0, 1.0], 5.0)  # slow syncs change nothing here
    assert cadence.k == 10 and not cadence.auto


def overlapped_syncs(rank, port, results):
    """One node of test_a_sync_lands_the_others_change_one_interval_late: three
    syncs of a model of three numbers, each node changing them between syncs."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(RANK=str(rank), WORLD_SIZE="2")
    node = nodes.ClusterNode(rank, 2, RunOptions(sync_every=10, node_updates="sum"))
    node.start()
    params, moments, counters = [torch.zeros(3)], [torch.zeros(2)], [torch.zeros(1)]
    node.begin(params, moments, counters)
    seen = []

    def interval(change, stop=None, at_end=False):
        for t in params + moments + counters:
            t.add_(change * (rank + 1))
        got = node.synchronise(stop, False, at_end)
        seen.append((got, params[0].tolist(), moments[0].tolist(), counters[0].tolist()))

    interval(1.0)
    interval(10.0, stop=signal.SIGTERM if rank == 1 else None)
    interval(100.0)  # not an epoch's end, but node 1's stop has arrived: a flush
    node.close()
    results.put((rank, seen))


def test_a_sync_lands_the_others_change_one_interval_late_and_a_stop_flushes():
    ctx = torch.multiprocessing.get_context("spawn")
    results, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=overlapped_syncs, args=(r, port, results)) for r in (0, 1)]
    for p in procs:
        p.start()
    seen = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    for rank, own in ((0, 1.0), (1, 2.0)):
        first, second, third = seen[rank]
        # 1st sync: the sum is sent; nothing has landed, the node keeps its own change.
        assert first == ((0, False), [own] * 3, [own] * 2, [own])
        # 2nd: the 1st sync's sum (1 + 2) lands; its own new change stays on top;
        # the stop node 1 asked for travels with this sync, so nobody stops yet.
        assert second == ((0, False), [3 + 10 * own] * 3, [1.5 + 10 * own] * 2, [3 + 10 * own])
        # 3rd: every node read the stop, so every node flushes: all changes are
        # in, the same on every node (parameters and counters summed, moments
        # averaged), and the stop is returned.
        assert third == ((signal.SIGTERM, False), [333.0] * 3, [166.5] * 2, [333.0])


def run_auto(cadence, sync_seconds, batch_seconds, syncs):
    """Feed CADENCE SYNCS syncs of a machine where a sync takes SYNC_SECONDS
    and a batch BATCH_SECONDS; returns the K after each."""
    ks = []
    for _ in range(syncs):
        cadence.upcoming += cadence.k
        cost, _ = cadence.measures(0.0)  # (the time is given below)
        cadence.agreed([sync_seconds if cost > 0 else cost, batch_seconds], sync_seconds)
        ks.append(cadence.k)
    return ks


def test_auto_cadence_keeps_syncs_near_their_share_on_slow_and_fast_links():
    # 20 ms syncs, 10 ms batches: 5% needs K = 38; K at most doubles per sync.
    # The first sync (it waits for the slowest start) is not measured.
    slow = run_auto(sync_cadence.Cadence(0), 0.020, 0.010, 7)
    assert slow == [10, 10, 20, 38, 38, 38, 38]
    share = 0.020 / (38 * 0.010 + 0.020)
    assert 0.04 < share <= sync_cadence.SYNC_SHARE
    # 1 ms syncs: K falls, halving at most per sync, to the 19 batches 5% allows
    fast = run_auto(sync_cadence.Cadence(0), 0.001, 0.001, 5)
    assert fast == [10, 10, 19, 19, 19]
    # syncs that hardly block (the sum travels while the workers train): K
    # would fall to 1, but stops at the floor
    start = sync_cadence.Cadence(0)
    start.k = 40
    assert run_auto(start, 0.0001, 0.010, 5) == [40, 40, 20, 10, 10]
    # a very slow link: never beyond the measured safe K
    assert run_auto(sync_cadence.Cadence(0), 5.0, 0.010, 8)[-1] == sync_cadence.AUTO_MOST


def test_the_measured_safe_region_bounds_auto_and_warns_outside_it():
    assert sync_cadence.safe_sync_every("sum", 2) == sync_cadence.SAFE_SUM_K[2]
    assert sync_cadence.safe_sync_every("sum", 4) == sync_cadence.SAFE_SUM_K[4]
    assert sync_cadence.safe_sync_every("sum", max(sync_cadence.SAFE_SUM_K) + 1) is None
    assert sync_cadence.safe_sync_every("average", 2) is None
    assert sync_cadence.cautions("sum", 0, 3) == []  # auto stays inside
    assert sync_cadence.cautions("sum", sync_cadence.SAFE_SUM_K[3], 3) == []
    (beyond,) = sync_cadence.cautions("sum", sync_cadence.SAFE_SUM_K[3] + 1, 3)
    assert f"at most {sync_cadence.SAFE_SUM_K[3]}" in beyond and "\n" not in beyond
    (unmeasured,) = sync_cadence.cautions("sum", 0, 9)
    assert "not 9" in unmeasured
    assert len(sync_cadence.cautions("average", 5, 2)) == 1
    options = RunOptions(sync_every=0, node_updates="sum")
    for world in (2, 3, 9):
        cadence = nodes.ClusterNode(0, world, options).cadence
        # beyond the measured node counts: the smallest K measured safe anywhere
        safe = sync_cadence.safe_sync_every("sum", world) or min(sync_cadence.SAFE_SUM_K.values())
        assert cadence.most == min(safe, sync_cadence.AUTO_MOST)
        # it starts, and stays, within the safe K, slow link or not
        assert 1 <= cadence.k <= cadence.most
        assert run_auto(cadence, 5.0, 0.01, 8)[-1] == cadence.most
        assert run_auto(cadence, 0.0001, 0.01, 8)[-1] == min(sync_cadence.AUTO_LEAST, cadence.most)


def test_auto_cadence_ignores_intervals_without_batches_and_reads_k_as_it_goes():
    cadence = sync_cadence.Cadence(0)
    # resumed at batch 37 of an epoch starting at 0: the first boundaries pass at once
    walk = cadence.boundaries(0, 37, 200, 200)
    assert next(walk) == 10
    assert cadence.measures(1e9)[1] == sync_cadence.UNKNOWN  # no batch in this interval
    cadence.agreed([0.5, sync_cadence.UNKNOWN], 0.5)
    cadence.agreed([0.5, sync_cadence.UNKNOWN], 0.5)
    assert cadence.k == 10
    cadence.k = 25  # as a sync would set it: the next boundary uses it
    assert next(walk) == 35


@pytest.mark.slow
def test_nodes_started_with_different_flags_stop_at_once_naming_the_flag(tmp_path, data_dir):
    port = free_port()
    common = ["--data-dir", data_dir, "--epochs", "1", "--log-interval", "10"]
    nodes = [
        start_node(tmp_path, "a", port, *common, "--sync-every", "10"),
        start_node(tmp_path, "b", port, *common, "--sync-every", "20"),
    ]
    outs = finish(nodes, timeout=120)
    for proc, out in zip(nodes, outs, strict=True):
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2, out
        assert len(errors) == 1 and "--sync-every differs (node 0: 10, node 1: 20)" in errors[0]
        assert "Traceback" not in out and "EnforceNotMet" not in out
    assert not (tmp_path / "a" / "model_checkpoint.pth").exists()


@pytest.mark.slow
def test_a_corrupt_checkpoint_on_one_node_is_set_aside_and_the_other_nodes_copy_wins(tmp_path, job):
    assert all(p.returncode == 0 for p in job_done(job("--epochs", "1")))
    good = (tmp_path / "a" / "model_checkpoint.pth").read_bytes()
    (tmp_path / "b" / "model_checkpoint.pth").write_bytes(b"garbage" * 1000)
    nodes = job("--epochs", "2", "--resume")
    outs = finish(nodes)
    assert [p.returncode for p in nodes] == [0, 0], outs
    assert "counted as no checkpoint and moved to model_checkpoint.pth.unreadable" in outs[1]
    assert all("resuming model_checkpoint.pth at epoch 2, batch 0/" in out for out in outs), outs
    assert (tmp_path / "b" / "model_checkpoint.pth.unreadable").read_bytes() == b"garbage" * 1000
    assert load_checkpoint(tmp_path / "b" / "model_checkpoint.pth")["epoch"] == 2
    assert good  # node a's first checkpoint was the one both resumed from


def job_done(nodes):
    finish(nodes)
    return nodes
