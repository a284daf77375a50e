"""examples/slurm/train.sbatch, run under bash with `srun` and `scontrol` stand-ins (no SLURM here): a job
preempted by the time limit's SIGUSR1 exits 75, asks to be requeued, and the requeued job continues the
same run to the same weights as a job that was never interrupted."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genflow.engine.checkpoint import load_checkpoint
from support import TINY_MODEL
from genflow.cli import main

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "slurm" / "train.sbatch"


@pytest.fixture
def slurm(tmp_path, tiny_mnist_npz):
    digit4_dir = tmp_path / "digit4"
    assert main(["data", "make", "digit4", f"out={digit4_dir}", f"source={tiny_mnist_npz}", "points=64"]) == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')  # one task: this node
    (bin_dir / "scontrol").write_text('#!/bin/bash\ncase "$1" in show) echo localhost ;; requeue) echo "$2" >> "$REQUEUED" ;; esac\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    overrides = [f"data.path={digit4_dir}", "train.epochs=4", "--runs-dir", str(tmp_path / "runs"), "--precision", "no", *TINY_MODEL]

    def submit(job_id: int, signal_after_step: int | None = None) -> int:
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": str(job_id), "SLURM_JOB_NAME": "t",
               "SLURM_JOB_NODELIST": "localhost", "SLURM_NNODES": "1", "SLURM_NODEID": "0", "RECIPE": "digit4", "GPUS": "1",
               "GENFLOW": f"{sys.executable} -m genflow.cli", "OVERRIDES": " ".join(overrides),
               "REQUEUED": str(tmp_path / "requeued.txt")}
        job = subprocess.Popen(["bash", str(SCRIPT)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
        metrics = tmp_path / "runs" / "digit4" / f"t-{job_id}" / "metrics.jsonl"
        while signal_after_step is not None and job.poll() is None:
            if metrics.exists() and metrics.read_text().count('"train"') >= signal_after_step:
                os.killpg(job.pid, signal.SIGUSR1)  # what --signal=USR1@120 does before the time limit
                break
            time.sleep(0.05)
        job.communicate(timeout=300)
        return job.returncode

    return submit, tmp_path, overrides


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_continues_to_the_weights_of_an_uninterrupted_one(slurm):
    submit, tmp_path, overrides = slurm
    assert main(["train", "digit4", "--name", "t-1", "--no-progress", *overrides]) == 0  # never interrupted (in this process)
    assert submit(2, signal_after_step=1) == 75  # after the 1st train line (train.log_every=2) of 20 steps
    assert (tmp_path / "requeued.txt").read_text().split() == ["2"]
    stopped = load_checkpoint(tmp_path / "runs" / "digit4" / "t-2" / "checkpoints" / "last.pt")["progress"]
    assert 2 <= stopped["step"] < 20
    assert submit(2) == 0  # the requeued job: same id, same run name, --resume auto continues it
    straight, requeued = (load_checkpoint(tmp_path / "runs" / "digit4" / f"t-{i}" / "checkpoints" / "last.pt") for i in (1, 2))
    assert requeued["progress"] == straight["progress"]
    assert all((requeued["model"][k] == v).all() for k, v in straight["model"].items())
