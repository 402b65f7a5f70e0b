"""The deadline watcher: a background thread that runs ``RoundAggregator.sweep`` every tick.

Requests already freeze a round the moment they see its deadline passed, but a round nobody
talks to must close too, and a round left ``aggregating`` by a crash must be finished after a
restart; the watcher does both. It only ever acts through the same locked transactions as
requests, so several watchers (several coordinator processes) are safe together.
"""

from __future__ import annotations

import logging
import threading

from coordinator.services.aggregation import RoundAggregator

log = logging.getLogger(__name__)


class DeadlineWatcher:
    """Sweeps every ``tick_s`` seconds: freezes overdue rounds and aggregates frozen ones."""

    def __init__(self, aggregator: RoundAggregator, tick_s: float):
        self.aggregator, self.tick_s = aggregator, tick_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pockettune-deadlines", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        # First sweep at once: finishes rounds a previous process left aggregating.
        while True:
            try:
                self.aggregator.sweep()
            except Exception:  # noqa: BLE001 - keep watching; the error is logged and retried next tick
                log.exception("deadline sweep failed")
            if self._stop.wait(self.tick_s):
                return
