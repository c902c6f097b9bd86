"""Stop requests: SIGTERM (preemption notices, scheduler time limits) and SIGINT (Ctrl-C).

The first signal sets a flag that the train loop reads after every step; it then saves a checkpoint and
exits. A watchdog makes sure the process is gone before the grace period ends (the scheduler's SIGKILL
would follow), leaving the newest complete checkpoint. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType

from clipjax.errors import Preempted


class PreemptionGuard:
    """Context manager that turns SIGTERM / SIGINT into a stop request for the loop.

    Args:
      grace_s: seconds from the signal to the latest exit; after that the watchdog ends the process
        with status 75 without waiting for the save in flight.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._done = threading.Event()

    def __enter__(self) -> PreemptionGuard:
        # Signal handlers can only be set from the main thread; elsewhere (e.g. a notebook worker thread)
        # the guard stays inert and the process keeps its default behaviour.
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the save
        if not self.requested:
            self.signal_name = signal.Signals(signum).name
            threading.Thread(target=self._watchdog, daemon=True).start()

    def _watchdog(self) -> None:
        deadline = time.monotonic() + self.grace_s
        if not self._done.wait(max(0.0, deadline - time.monotonic())):
            print(
                f"error: {self.signal_name}: no clean exit within {self.grace_s:g} s "
                "(config.preemption_grace_s); stopping now, the newest complete checkpoint is kept",
                file=sys.stderr,
                flush=True,
            )
            os._exit(Preempted.exit_status)
