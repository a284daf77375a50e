"""The engine across processes: `genflow train --gpus N` (gloo CPU processes), `--nnodes M` on localhost and a
streamed run of several processes x DataLoader workers train to the weights of one process, and resume
exactly. Each test starts real processes through the CLI (seconds each: marked slow)."""

import subprocess
import sys

import pytest
import torch

from genflow.engine.checkpoint import load_checkpoint
from support import TINY_MODEL


@pytest.fixture(scope="module")
def one_process_weights(tmp_path_factory, digit4_dir):
    """6 steps of the tiny digit4 model in one process, fp32: what the multi-process runs must reach."""
    runs = tmp_path_factory.mktemp("one")
    subprocess.run([sys.executable, "-m", "genflow.cli", "train", "digit4", "--runs-dir", str(runs), "--no-progress",
                    f"data.path={digit4_dir}", "train.max_steps=6", "--precision", "no", *TINY_MODEL, "--name", "one"],
                   check=True, capture_output=True, timeout=300)
    return load_checkpoint(runs / "digit4" / "one" / "checkpoints" / "last.pt")["model"]


@pytest.mark.slow
def test_two_cpu_processes_train_like_one(tmp_path, digit4_dir, one_process_weights):
    """--gpus 2 on CPU: two gloo processes, each half of every global batch; same weights as one process."""
    common = ["train", "digit4", "--runs-dir", str(tmp_path), "--no-progress", f"data.path={digit4_dir}", "train.max_steps=6",
              "--precision", "no",  # equal to float round-off: an fp32 property (auto may pick bf16)
              *TINY_MODEL]
    proc = subprocess.run([sys.executable, "-m", "genflow.cli", *common, "--name", "two", "--gpus", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = load_checkpoint(tmp_path / "digit4" / "two" / "checkpoints" / "last.pt")
    assert two["progress"]["step"] == 6
    for key, value in one_process_weights.items():
        torch.testing.assert_close(two["model"][key], value, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_two_nodes_of_one_process_each_train_like_one_process(tmp_path, digit4_dir, one_process_weights):
    """--nnodes 2 on localhost (gloo): node ranks 0 and 1 each start one process, no --name given (rank 0
    names the run, only it writes); the weights equal one process's with the same global batch."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    common = [sys.executable, "-m", "genflow.cli", "train", "digit4", "--runs-dir", str(tmp_path), "--no-progress",
              f"data.path={digit4_dir}", "train.max_steps=6", "--precision", "no", *TINY_MODEL]
    nodes = [subprocess.Popen([*common, "--nnodes", "2", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
                               "--master-port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    runs = list((tmp_path / "digit4").iterdir())
    assert len(runs) == 1  # both nodes trained into one run dir, named by rank 0
    two = load_checkpoint(runs[0] / "checkpoints" / "last.pt")
    assert two["progress"]["step"] == 6
    for key, value in one_process_weights.items():
        torch.testing.assert_close(two["model"][key], value, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_a_streamed_run_of_two_processes_x_two_workers_resumes_to_the_same_weights(tmp_path, digit4_dir):
    """data.streaming: each of 2 processes x 2 DataLoader workers reads its own part of the shards, a new
    shuffle per epoch; stopped mid-epoch and resumed (through `resume_from_checkpoint=FILE`, which the
    launcher passes on once), the run ends on the uninterrupted run's weights."""
    common = [sys.executable, "-m", "genflow.cli", "train", "digit4", "--runs-dir", str(tmp_path), "--no-progress", "--gpus", "2",
              f"data.path={digit4_dir}", "data.streaming=true", "train.num_workers=2", "--precision", "no", *TINY_MODEL]
    split = tmp_path / "digit4" / "split"
    for extra in (["--name", "straight", "train.max_steps=6"], ["--name", "split", "train.max_steps=3"],
                  [f"resume_from_checkpoint={split / 'checkpoints' / 'last.pt'}", "train.max_steps=6"]):  # the source trainers' form
        proc = subprocess.run([*common, *extra], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    straight, resumed = (load_checkpoint(tmp_path / "digit4" / n / "checkpoints" / "last.pt") for n in ("straight", "split"))
    assert straight["progress"] == resumed["progress"] and straight["progress"]["epoch"] >= 1  # crossed an epoch
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key


@pytest.mark.slow
def test_two_cpu_processes_stop_early_together(tmp_path, digit4_dir):
    """The main process decides to stop early; the other stops with it (no hang) at the same epoch."""
    proc = subprocess.run([sys.executable, "-m", "genflow.cli", "train", "digit4", "--runs-dir", str(tmp_path), "--no-progress",
                           f"data.path={digit4_dir}", "--precision", "no", *TINY_MODEL, "--name", "two", "--gpus", "2",
                           "train.epochs=6", "train.eval_every=1", "train.early_stop_patience=1",
                           "train.early_stop_min_delta=1e9", "eval.num_clouds=8"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = load_checkpoint(tmp_path / "digit4" / "two" / "checkpoints" / "last.pt")
    assert last["progress"]["epoch"] == 2 and last["best"]["stopped_early"] == 2
