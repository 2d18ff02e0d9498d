"""The event loop shared by every service: poll the transport, tick the node, repeat.

Nodes are single-threaded state machines with `start()`, `tick()`, `stop()` and a
`finished` flag. Several nodes may share one loop (the in-process experiment
runner); a service process runs exactly one.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from typing import Protocol

from modiad.transport.base import Transport

__all__ = ["Node", "install_stop_signals", "run_nodes"]

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.05
"""Maximum wait for an inbound message before ticking; bounds the reaction time to deadlines."""


class Node(Protocol):
    finished: bool

    def start(self) -> None: ...

    def tick(self) -> None: ...

    def stop(self) -> None: ...


def install_stop_signals(stop_event: threading.Event) -> None:
    """Make SIGTERM and SIGINT set `stop_event` so the loop ends cleanly (main thread only)."""

    def _handle(signal_number: int, _frame: object) -> None:
        logger.info("signal %s received; stopping", signal.Signals(signal_number).name)
        stop_event.set()

    signal.signal(signal.SIGTERM, _handle)
    signal.signal(signal.SIGINT, _handle)


def run_nodes(
    pairs: Sequence[tuple[Transport, Node]],
    *,
    stop_event: threading.Event | None = None,
    until: str = "all",
    poll_interval_s: float = POLL_INTERVAL_S,
) -> None:
    """Start every node, then loop until all (until="all") or any (until="any") have finished.

    With one pair, the poll waits up to `poll_interval_s` for traffic. With several
    pairs (one process, in-process bus), each poll returns at once and the loop
    keeps going while any transport delivered something.
    """
    stop_event = stop_event or threading.Event()
    for transport, node in pairs:
        node.start()

    wait_s = poll_interval_s if len(pairs) == 1 else 0.0
    try:
        while not stop_event.is_set():
            delivered = 0
            for transport, node in pairs:
                delivered += transport.poll(wait_s)
                node.tick()
            done = [node.finished for _, node in pairs]
            if (until == "all" and all(done)) or (until == "any" and any(done)):
                break
            if delivered == 0 and len(pairs) > 1:
                stop_event.wait(0.001)
    finally:
        for transport, node in pairs:
            try:
                node.stop()
            except Exception:  # a failing stop must not hide the loop's own error
                logger.exception("stopping node %s failed", type(node).__name__)
