"""Live progress of a run, read from the broker like any other subscriber.

The observer follows the cloud's round announcements and counts the status reports
and updates of the current round. On a terminal it rewrites one status line. In a
log or pipe it prints a line only when the phase changes, so logs stay short.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from typing import TextIO

from modiad.codec import decode
from modiad.errors import ModiadError, ProtocolError
from modiad.protocol import RoundHeader, StatusHeader, Topics, UpdateHeader
from modiad.transport.mqtt import MqttSettings, MqttTransport

__all__ = ["ProgressObserver"]

logger = logging.getLogger(__name__)

MAX_OBSERVED_PAYLOAD_BYTES = 256 * 1024 * 1024


class ProgressObserver:
    """Counts a run's traffic per round and renders a one-line status."""

    def __init__(self, broker_url: str, topic_root: str, *, expected_edges: int, stream: TextIO = sys.stdout) -> None:
        # A passive watcher: no session to keep on the broker, no need to delay acknowledgements.
        settings = MqttSettings(url=broker_url, persistent_session=False, ack_after_handling=False)
        self.transport = MqttTransport(settings, client_id=f"modiad-progress-{uuid.uuid4().hex[:8]}")
        self.topics = Topics(topic_root)
        self.expected_edges = expected_edges
        self.stream = stream
        self.interactive = stream.isatty()
        self.round = 0
        self.total_rounds = 0
        self.phase = "joining"
        self.reported: set[str] = set()
        self.updates: set[tuple[str, str]] = set()
        self._phase_started = time.monotonic()
        self._last_line = ""

    def start(self) -> None:
        """Connect and subscribe; a failure only disables the live line."""
        try:
            self.transport.start()
            self.transport.subscribe(self.topics.round_current, self._on_round)
            self.transport.subscribe(self.topics.all_status, self._on_status)
            self.transport.subscribe(self.topics.all_updates, self._on_update)
        except ModiadError as error:
            logger.warning("live progress disabled: %s", error)
            self.transport = None

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.stop()
        if self.interactive and self._last_line:
            self.stream.write("\n")
            self.stream.flush()

    def poll(self, timeout_s: float) -> None:
        """Deliver pending messages and refresh the status line."""
        if self.transport is None:
            time.sleep(timeout_s)
            return
        self.transport.poll(timeout_s)
        self._render()

    def _on_round(self, topic: str, payload: bytes) -> None:
        try:
            header, _ = decode(payload, RoundHeader, max_payload_bytes=MAX_OBSERVED_PAYLOAD_BYTES)
        except ProtocolError:
            return
        if (header.round, header.phase) == (self.round, self.phase):
            return
        if header.round != self.round:
            self.reported.clear()
            self.updates.clear()
        self.round, self.phase, self.total_rounds = header.round, header.phase, header.total_rounds
        self._phase_started = time.monotonic()

    def _on_status(self, topic: str, payload: bytes) -> None:
        try:
            header, _ = decode(payload, StatusHeader, max_payload_bytes=MAX_OBSERVED_PAYLOAD_BYTES)
        except ProtocolError:
            return
        if header.round == self.round:
            self.reported.add(header.edge_id)

    def _on_update(self, topic: str, payload: bytes) -> None:
        try:
            header, _ = decode(payload, UpdateHeader, max_payload_bytes=MAX_OBSERVED_PAYLOAD_BYTES)
        except ProtocolError:
            return
        if header.round == self.round:
            self.updates.add((header.edge_id, header.class_name))

    def describe(self) -> str:
        """Return the current status line."""
        waited = time.monotonic() - self._phase_started
        if self.phase == "joining" or self.round == 0:
            return f"waiting for the cloud and {self.expected_edges} edges to start ({waited:.0f} s)"
        prefix = f"round {self.round}/{self.total_rounds}"
        if self.phase == "status":
            return (
                f"{prefix}: edges extract features and report, {len(self.reported)}/{self.expected_edges} "
                f"reported ({waited:.0f} s)"
            )
        if self.phase == "train":
            return f"{prefix}: edges train assigned classes, {len(self.updates)} updates received ({waited:.0f} s)"
        return f"{prefix}: {self.phase}"

    def _render(self) -> None:
        line = self.describe()
        if self.interactive:
            self.stream.write("\r" + line.ljust(len(self._last_line)))
            self.stream.flush()
            self._last_line = line
            return
        # Without a terminal, print each phase once, without counts that would be stale at once.
        phase_key = line.split(",")[0].split(" (")[0]
        if phase_key != self._last_line and self.phase not in ("done", "finished"):
            self.stream.write(phase_key + "\n")
            self.stream.flush()
        self._last_line = phase_key

    def clear_line(self) -> None:
        """Blank the interactive status line so a permanent line can be printed."""
        if self.interactive and self._last_line:
            self.stream.write("\r" + " " * len(self._last_line) + "\r")
            self.stream.flush()
            self._last_line = ""
