"""How a run answers Ctrl-C (SIGINT) and SIGTERM: both stop it cleanly, with the command that
resumes it, and neither is lost.

Ctrl-C that is never lost. Python answers SIGINT by raising ``KeyboardInterrupt`` in the main
thread at the next bytecode, wherever that is. When it lands inside an object's ``__del__`` or a
weakref callback (the garbage collector runs them at arbitrary points; torch, Lightning and the
checkpoint writer make many), Python prints "Exception ignored" and drops it: the run goes on as
if no Ctrl-C had come (seen once in CI: a run interrupted right after a mid-task checkpoint
finished its stream). While a stream runs, :func:`catch_sigint` installs a handler that also
*records* the request, and :func:`check` raises it again at safe points (after every training
batch: ``cl_bench.training.LitTask.on_train_batch_end``; before every task: the runner).

SIGTERM as Ctrl-C. While a stream runs, :func:`terminate_as_interrupt` makes SIGTERM raise
:class:`SigTerm` instead of killing the process (Lightning raises its own ``SIGTERMException``
inside a fit), so the runner ends the run as for Ctrl-C; not in a SLURM job, where SIGTERM means
requeue or cancel.

A sweep's job stopped either way stops the whole sweep (:class:`SweepStopped`).

Floor 0: the standard library only at import (the command line imports :class:`SweepStopped`
before anything heavy); Lightning's SLURM detection is imported when the SIGTERM handler is
installed, in a run, which has imported Lightning already.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_requested = False


def _on_sigint(signum, frame) -> None:
    """SIGINT: remember it, then raise ``KeyboardInterrupt`` as Python's own handler does."""
    global _requested
    _requested = True
    raise KeyboardInterrupt


def requested() -> bool:
    """Whether a Ctrl-C came since :func:`catch_sigint` was entered."""
    return _requested


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a Ctrl-C came (one a ``__del__`` may have swallowed).

    Raises:
        KeyboardInterrupt: a Ctrl-C was recorded and not yet handled.
    """
    if _requested:
        raise KeyboardInterrupt


@contextlib.contextmanager
def catch_sigint():
    """While the block runs, SIGINT goes through :func:`_on_sigint`. Installed only in the main
    thread and only over Python's default handler (a host program's own handler is left alone);
    the previous handler is restored and the record cleared afterwards."""
    global _requested
    installed = (threading.current_thread() is threading.main_thread()
                 and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    _requested = False
    previous = signal.signal(signal.SIGINT, _on_sigint) if installed else None
    try:
        yield
    finally:
        _requested = False
        if installed:
            signal.signal(signal.SIGINT, previous)


class SigTerm(BaseException):
    """SIGTERM outside Lightning's fit, raised by :func:`terminate_as_interrupt`'s handler."""


@contextlib.contextmanager
def terminate_as_interrupt():
    """While the stream runs, SIGTERM stops it like Ctrl-C (an exception, so the run ends
    cleanly and says how to resume) instead of killing the process. Installed only in the main
    thread, where nobody else handles SIGTERM, and not in a SLURM job (there SIGTERM comes with a
    requeue or a cancel, and the job must end as SLURM and submitit expect; the requeued job
    resumes from the checkpoints); the previous handler is restored afterwards."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    installed = (threading.current_thread() is threading.main_thread()
                 and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)
                 and not SLURMEnvironment.detect())  # SLURM's SIGTERM: requeue or cancel
    if installed:
        def _raise(signum, frame):
            raise SigTerm()
        previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


class SweepStopped(KeyboardInterrupt):
    """A sweep's job was stopped by Ctrl-C or SIGTERM (``clbench -m``, jobs run in the
    launching process): the whole sweep stops. A ``KeyboardInterrupt``, so Hydra's launcher
    (which records a job's ordinary exception and starts the next job) lets it through, and
    the command line prints one line: the command that continues the sweep.

    Attributes:
        error: the job's :class:`~cl_bench.errors.Interrupted` (where the job stopped);
        job_dir: the job's run directory;
        sweep_dir: the sweep's directory (``hydra.sweep.dir``);
        exit_code: the job's (130 after SIGINT, 143 after SIGTERM).
    """

    def __init__(self, error: Exception, job_dir: str, sweep_dir: str):
        super().__init__(str(error))
        self.error, self.job_dir, self.sweep_dir = error, job_dir, sweep_dir
        self.exit_code = getattr(error, "exit_code", 130)
