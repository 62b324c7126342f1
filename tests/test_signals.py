"""cl_bench.signals: a Ctrl-C that lands in an object's ``__del__`` is dropped by Python
("Exception ignored"); it is recorded, and the run stops at its next check all the same. SIGTERM
raises an exception while a stream runs, except in a SLURM job. (A whole run stopped by either:
tests/test_resume.py.)"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

from cl_bench import signals


class _CtrlCWhileCollected:
    """Sends SIGINT to this process while it is being collected: the KeyboardInterrupt is
    raised inside ``__del__``, where Python ignores it."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs here, in __del__


@pytest.fixture(autouse=True)
def _python_sigint():
    """Python's own SIGINT handler during the test, as in a terminal (pytest started as a
    shell's background job inherits SIGINT ignored, and catch_sigint leaves that alone)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_dropped_in_a_destructor_is_raised_at_the_next_check(monkeypatch):
    dropped = []  # what Python reports as "Exception ignored in ... __del__"
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))
    with signals.catch_sigint():
        _CtrlCWhileCollected()  # collected at once: SIGINT inside __del__, dropped
        assert dropped == [KeyboardInterrupt]
        assert signals.requested()
        with pytest.raises(KeyboardInterrupt):
            signals.check()
    assert not signals.requested()  # cleared, and Python's own handler is back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_a_ctrl_c_the_check_does_nothing():
    with signals.catch_sigint():
        signals.check()
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    signals.check()


def test_an_ignored_sigint_stays_ignored():
    """A run started with SIGINT ignored (``clbench ... &`` in a script) keeps it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with signals.catch_sigint():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_sigterm_raises_while_a_stream_runs_and_the_previous_handler_comes_back(monkeypatch):
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with pytest.raises(signals.SigTerm):
            with signals.terminate_as_interrupt():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)  # the handler raises here
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_in_a_slurm_job_or_under_a_host_handler_sigterm_is_left_alone(monkeypatch):
    """SLURM's SIGTERM (requeue, cancel) must end the job as SLURM expects; a host program's
    own SIGTERM handler stays."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        monkeypatch.setenv("SLURM_NTASKS", "1")
        monkeypatch.setenv("SLURM_JOB_NAME", "clbench")
        with signals.terminate_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        monkeypatch.delenv("SLURM_NTASKS")

        def host(signum, frame):
            pass
        signal.signal(signal.SIGTERM, host)
        with signals.terminate_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is host
        assert signal.getsignal(signal.SIGTERM) is host
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_ctrl_c_in_a_sweep_prints_one_line_whose_command_continues_the_whole_sweep(tmp_path):
    """``clbench -m`` (the basic launcher, jobs in this process): a Ctrl-C in job 1 stops the
    sweep (job 1's advice was printed twice and the next job started); the one line's command
    (the same command with ``hydra.sweep.dir``) then skips the finished job 0, continues job 1
    from its checkpoints, and completes the sweep."""
    import shlex
    import subprocess

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "CLBENCH_CACHE": str(tmp_path / "cache"), "PYTHONHASHSEED": "0"}
    python = [sys.executable, "-m", "cl_bench.cli"]
    # job 1's tasks take a few seconds each (~100 steps/s), so the Ctrl-C lands inside one
    args = ["-m", "tasks=digits", "strategy=seq_ft", "train.max_steps=2,400",
            "train.batch_size=16", "logger=none", "train.progress_bar=false",
            "eval.probes=false", "hardware.num_threads=1", "train.checkpoint_min_interval_s=0",
            f"results_dir={tmp_path}/r"]
    proc = subprocess.Popen(python + args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,  # Ctrl-C as in a terminal
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def job1_rows() -> str:
        found = list((tmp_path / "r").glob("multirun/*/1_seq_ft_seed0/matrix.csv"))
        return found[0].read_text() if found else ""

    deadline = time.time() + 300
    while "after_digits_0_1" not in job1_rows() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # job 1 in its second task
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    os.kill(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    # the tasks job 1 finished before the Ctrl-C landed (1 unless the machine is slow to react)
    done = job1_rows().count("after_")
    assert 1 <= done < 3, job1_rows()
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out
    ours = [ln for ln in out.splitlines() if ln.startswith("clbench:")]
    assert len(ours) == 1 and ours[0].startswith("clbench: stopped: interrupted by Ctrl-C "), (
        out[-3000:])
    (sweep,) = (tmp_path / "r" / "multirun").iterdir()
    command = ours[0].split("continue the whole sweep", 1)[1].split(" with: ", 1)[1]
    assert command == shlex.join(["clbench", *args, f"hydra.sweep.dir={sweep}"]), command
    assert sorted(p.name for p in sweep.glob("*_seed0")) == ["0_seq_ft_seed0", "1_seq_ft_seed0"]

    again = subprocess.run(python + shlex.split(command)[1:], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    said = again.stdout + again.stderr
    assert f"all 3 tasks already done in {sweep}/0_seq_ft_seed0" in said, said[-3000:]
    resumed = f"resuming {sweep}/1_seq_ft_seed0 after {done}/3 tasks"
    assert resumed in said, said[-3000:]
    assert "task 1/3" not in said.split(resumed, 1)[1]  # not again
    for job in ("0_seq_ft_seed0", "1_seq_ft_seed0"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["complete"], job
    assert not list((tmp_path / "r" / "multirun").glob("*/2_*"))
