"""Stop signals: a run stops at a step boundary, checkpoints and ends with status ``interrupted``.

SIGTERM is what Slurm and most schedulers send before a kill, SIGUSR1 is Slurm's usual preemption
warning, SIGUSR2 submitit's (hydra-submitit-launcher, sent ``signal_delay_s`` before the time limit
or on preemption) and SIGINT is Ctrl-C. ``__main__`` hands the signal on to the handler that was
installed before the run's once the checkpoint is safe (submitit's requeue).
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


class StopRequest:
    """SIGTERM / SIGUSR1 / SIGUSR2 / SIGINT: finish the step, checkpoint, stop.

    Further stop signals are noted, not acted on (a KeyboardInterrupt mid-checkpoint would leave
    a failed run behind); SIGKILL still stops at once and the last checkpoint resumes. The handlers
    installed before (submitit's requeue handler, for one) are restored on exit, so the caller can
    hand the signal on once the checkpoint is safe (``__main__``)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second Ctrl-C while the checkpoint is written must not tear it
            log.warning(
                "received %s again: still finishing the step and its checkpoint (SIGKILL stops at "
                "once; the last checkpoint is then resumed)",
                signal.Signals(signum).name,
            )
            return
        self.signum = signum
        log.warning("received %s: checkpointing after this step", signal.Signals(signum).name)

    @property
    def name(self) -> str | None:
        """The signal received (``SIGTERM``...), or None."""
        return None if self.signum is None else signal.Signals(self.signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
