"""genflow.engine.launch: the torchrun command `genflow train --gpus N [--nnodes M ...]` starts, the signals
it passes on, `agree_on` and bad --gpus / --nnodes values. No process is started (a fake Popen), no
process group is joined (a fake broadcast); the real multi-process runs are in test_distributed.py."""

import os
import signal
import sys

import pytest
import torch

from genflow.engine import launch
from genflow.engine.launch import NodeSpec, agree_on, is_launched_worker, launch_processes
from genflow.engine.trainer import PREEMPTED_EXIT_CODE
from genflow.errors import ConfigError


class FakeChild:
    """What launch_processes sees of torchrun: the command, the environment, signals sent, an exit code."""

    started: list["FakeChild"] = []

    def __init__(self, cmd, env, start_new_session):
        self.cmd, self.env, self.own_session, self.signals = cmd, env, start_new_session, []
        self.on_wait = lambda: 0
        FakeChild.started.append(self)

    def wait(self):
        return self.on_wait()

    def send_signal(self, number):
        self.signals.append(number)


@pytest.fixture
def child(monkeypatch):
    """The next FakeChild launch_processes starts; set `.code` / `.during_wait` on it before launching."""
    FakeChild.started = []
    plan = {"code": 0, "during_wait": None}

    def popen(cmd, env, start_new_session):
        started = FakeChild(cmd, env, start_new_session)
        started.on_wait = lambda: (plan["during_wait"] and plan["during_wait"]()) or plan["code"]
        return started

    monkeypatch.setattr(launch.subprocess, "Popen", popen)
    monkeypatch.setattr(launch.torch.cuda, "is_available", lambda: False)
    return plan


def test_one_node_runs_a_standalone_torchrun_of_genflow_with_n_processes(child, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(launch.os, "cpu_count", lambda: 8)
    child["code"] = 3
    assert launch_processes(2, ["train", "digit4", "--name", "r"]) == 3  # the processes' exit code
    started = FakeChild.started[-1]
    assert started.cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "genflow.cli", "train", "digit4", "--name", "r"]
    assert started.env["OMP_NUM_THREADS"] == "4" and started.own_session  # CPU processes share the cores


def test_a_user_s_thread_count_is_kept(child, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    launch_processes(2, ["train", "digit4"])
    assert FakeChild.started[-1].env["OMP_NUM_THREADS"] == "1"


def test_node_r_of_m_joins_node_0_s_rendezvous(child):
    launch_processes(1, ["train", "digit4"], NodeSpec(nnodes=3, node_rank=2, master_addr="10.0.0.5", master_port=4242))
    cmd = FakeChild.started[-1].cmd
    assert cmd[3:9] == ["--nnodes=3", "--node-rank=2", "--master-addr=10.0.0.5", "--master-port=4242", "--nproc-per-node=1", "-m"]
    assert "--standalone" not in cmd


def test_a_preemption_signal_reaches_the_processes_once_as_sigterm_and_exits_75(child):
    def two_signals_while_training():
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        return 0

    outside = []  # the signals that got past the launcher (also keeps them from ending pytest if it breaks)

    def note(signum, frame):
        outside.append(signum)

    previous = {number: signal.signal(number, note) for number in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        child["during_wait"] = two_signals_while_training
        assert launch_processes(2, ["train", "digit4"]) == PREEMPTED_EXIT_CODE == 75
        assert FakeChild.started[-1].signals == [signal.SIGTERM] and outside == []
        assert signal.getsignal(signal.SIGUSR1) is note and signal.getsignal(signal.SIGTERM) is note  # handlers given back
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def test_more_processes_than_visible_gpus_is_one_clear_error(child, monkeypatch):
    monkeypatch.setattr(launch.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(launch.torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"--gpus 4: only 1 CUDA device\(s\) visible"):
        launch_processes(4, ["train", "digit4"])
    assert FakeChild.started == []


@pytest.mark.parametrize("spec, message", [
    ({"nnodes": 2, "node_rank": 2}, "--node-rank 2 --nnodes 2: expected 0 <= node rank < nodes"),
    ({"nnodes": 0}, "--node-rank 0 --nnodes 0"),
    ({"node_rank": -1}, "--node-rank -1"),
    ({"master_port": 70000}, "--master-port 70000: expected a TCP port"),
])
def test_an_impossible_node_placement_is_one_clear_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        NodeSpec(**spec)


@pytest.mark.parametrize("args, message", [(["--nnodes", "0"], "Invalid value for '--nnodes'"),  # --gpus 0: test_cli.py
                                           (["--nnodes", "2", "--node-rank", "5"], "--node-rank 5 --nnodes 2")])
def test_train_refuses_bad_gpus_and_nodes_before_reading_anything(cli, tmp_path, args, message):
    code, _, err = cli("train", "digit4", *args, "--runs-dir", tmp_path, "data.path=/nonexistent")
    assert code == 2 and "Traceback" not in err and message in err
    assert list(tmp_path.iterdir()) == []


def test_a_launched_worker_is_recognised_by_its_environment(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not is_launched_worker()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert is_launched_worker()
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun of one process: nothing to coordinate
    assert not is_launched_worker()


def test_agree_on_is_the_value_itself_for_one_process(monkeypatch):
    joined = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *args, **kwargs: joined.append(args))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert agree_on("20261205-170000") == "20261205-170000"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert agree_on("20261205-170000") == "20261205-170000"
    assert joined == []  # no process group for a single process


def test_agree_on_hands_every_process_rank_0_s_value(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    joined, broadcasts = [], []
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(joined))
    monkeypatch.setattr(dist, "init_process_group", lambda backend: joined.append(backend))

    def broadcast_object_list(box, src):  # what this process receives from rank 0
        broadcasts.append((list(box), src))
        box[0] = "rank 0's name"

    monkeypatch.setattr(dist, "broadcast_object_list", broadcast_object_list)
    assert agree_on("my name") == "rank 0's name"
    assert agree_on("again") == "rank 0's name"
    assert joined == ["nccl" if torch.cuda.is_available() else "gloo"]  # joined once, then reused
    assert broadcasts == [(["my name"], 0), (["again"], 0)]
