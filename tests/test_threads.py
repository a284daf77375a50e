"""ThreadBudget: the thread count follows the cores other processes leave free."""

import os
import subprocess
import sys
import time

import pytest
import torch

from genflow.threads import CpuReading, ThreadBudget, read_cpu


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_reading_counts_busy_time_of_the_chosen_cpus_only(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal, in clock ticks
    stat.write_text("cpu  300 0 100 900 50 0 0 0\ncpu0 200 0 50 400 25 0 0 0\ncpu1 100 0 50 500 25 0 0 0\nintr 1 2\n")
    ticks = os.sysconf("SC_CLK_TCK")
    assert read_cpu({0}, str(stat)).busy == pytest.approx(250 / ticks)
    assert read_cpu({0, 1}, str(stat)).busy == pytest.approx(400 / ticks)
    assert read_cpu({0}, str(tmp_path / "missing")) is None


def test_a_fixed_count_stays():
    budget = ThreadBudget(1, interval=0.0)
    assert budget.update() == 1 and torch.get_num_threads() == 1


def test_threads_follow_the_cores_others_use():
    # (wall, busy of both CPUs, own) seconds: another process takes one core, then leaves, then takes both
    readings = iter([CpuReading(0, 0, 0), CpuReading(1, 2.0, 1.0), CpuReading(2, 3.0, 2.0), CpuReading(3, 5.0, 2.0)])
    budget = ThreadBudget(max_threads=2, interval=0.0, reader=lambda: next(readings))
    budget.cpus = {0, 1}
    assert [budget.update() for _ in range(3)] == [1, 2, 1]
    assert budget.changes == [(1, 1.0), (2, 0.0), (1, 2.0)]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2 or read_cpu() is None,
                    reason="needs Linux /proc/stat and two CPUs")
def test_a_busy_core_takes_a_thread_away():
    first, second = sorted(os.sched_getaffinity(0))[:2]
    budget = ThreadBudget(max_threads=2, interval=0.4, reader=lambda: read_cpu({first, second}))
    budget.cpus = {first, second}  # watch two CPUs; the competitor is pinned to one of them
    busy = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{first}}})\nwhile True: pass"])
    try:
        time.sleep(0.7)
        assert budget.update() == 1  # whatever else runs here only adds to the competitor's core
    finally:
        busy.kill()
        busy.wait()


def test_family_time_counts_the_process_tree_and_reads_names_with_spaces(tmp_path):
    from genflow.threads import family_cpu_seconds

    ticks = os.sysconf("SC_CLK_TCK")

    def proc(pid, ppid, utime, cutime=0, name="python"):
        (tmp_path / str(pid)).mkdir()
        fields = ["S", ppid, 0, 0, 0, 0, 0, 0, 0, 0, 0, utime, 0, cutime, 0, 20]
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({name}) " + " ".join(str(f) for f in fields) + "\n")

    proc(10, 1, 100, cutime=50)  # the run, with 50 ticks of workers that ended
    proc(11, 10, 200, name="pt_data_worker (1)")  # a live worker
    proc(12, 11, 10)  # its child
    proc(20, 1, 999)  # someone else
    assert family_cpu_seconds(10, str(tmp_path)) == pytest.approx(360 / ticks)
    assert family_cpu_seconds(99, str(tmp_path)) is None


def test_a_run_waits_for_readings_to_agree_and_splits_the_free_cores_among_its_processes():
    # a 4-core machine: quiet at the first decision, then another process takes 2 cores for one reading only,
    # later for two in a row
    readings = iter([CpuReading(0, 0, 0), CpuReading(1, 0, 0), CpuReading(2, 2.0, 0), CpuReading(3, 2.0, 0),
                     CpuReading(4, 4.0, 0), CpuReading(5, 6.0, 0)])
    budget = ThreadBudget(max_threads=2, interval=0.0, reader=lambda: next(readings), share=2, confirm=2)
    budget.cpus = {0, 1, 2, 3}
    assert [budget.update() for _ in range(5)] == [2, 2, 2, 2, 1]  # (4 - 2) // 2 ranks = 1, once confirmed
    first = iter([CpuReading(0, 0, 0), CpuReading(1, 2.0, 0)])
    budget = ThreadBudget(max_threads=2, interval=0.0, reader=lambda: next(first), share=2, confirm=2)
    budget.cpus = {0, 1, 2, 3}
    assert budget.update() == 1  # the first decision needs no confirming


@pytest.mark.skipif(read_cpu() is None, reason="needs Linux /proc")
def test_the_runs_own_worker_is_not_a_competitor():
    worker = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a child: part of this process's run
    try:
        start = read_cpu(family_root=os.getpid())
        time.sleep(0.6)
        end = read_cpu(family_root=os.getpid())
        assert end.own - start.own > 0.3  # the worker's CPU time counts as the run's own
    finally:
        worker.kill()
        worker.wait()
