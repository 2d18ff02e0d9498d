"""An in-process broker and its transport, for deterministic experiments and unit tests.

`InProcessBus` plays the broker: it keeps retained messages, each client's topic
filters and one FIFO queue per client. A publish appends the message to the queue of
every client with a matching filter, in the order the clients connected, so a run
with the same calls always delivers the same messages in the same order. Sessions
are not persistent: a stopped client's queue and filters are dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from modiad.errors import TransportError
from modiad.transport.base import (
    Handler,
    Transport,
    Will,
    topic_matches_filter,
    validate_topic_filter,
    validate_topic_name,
)

__all__ = ["InProcessBus", "InProcessTransport"]

logger = logging.getLogger(__name__)


@dataclass
class _Session:
    """One connected client's broker-side state."""

    will: Will | None
    topic_filters: list[str] = field(default_factory=list)
    queue: deque[tuple[str, bytes]] = field(default_factory=deque)


class InProcessBus:
    """A broker inside this process; share one instance between all its transports.

    Thread-safe, so transports may also poll from different threads; delivery order
    is then still FIFO per client.
    """

    def __init__(self) -> None:
        self._sessions: dict[str, _Session] = {}
        self._retained: dict[str, bytes] = {}
        self._condition = threading.Condition()

    def connect(self, client_id: str, will: Will | None) -> None:
        """Open a session for `client_id`, or raise TransportError if that id is already connected."""
        with self._condition:
            if client_id in self._sessions:
                raise TransportError(
                    f"client id {client_id!r} is already connected to this in-process bus. Give every transport its own id"
                )
            self._sessions[client_id] = _Session(will=will)
        logger.debug("in-process bus: client %s connected", client_id)

    def disconnect(self, client_id: str, *, publish_will: bool) -> None:
        """Close the session of `client_id`, publishing its will first if `publish_will` (an abrupt disconnect)."""
        with self._condition:
            session = self._sessions.pop(client_id, None)
            if session is None:
                return
            if publish_will and session.will is not None:
                topic, payload, retain = session.will
                self._route(topic, payload, retain=retain)
                logger.info("in-process bus: client %s disconnected abruptly, published its will on %s", client_id, topic)
            else:
                logger.debug("in-process bus: client %s disconnected", client_id)

    def subscribe(self, client_id: str, topic_filter: str) -> None:
        """Add `topic_filter` to the session of `client_id` and queue the retained messages it matches.

        As on an MQTT broker, subscribing again to a filter queues its retained messages again.
        """
        with self._condition:
            session = self._session(client_id)
            if topic_filter not in session.topic_filters:
                session.topic_filters.append(topic_filter)
            for topic, payload in self._retained.items():
                if topic_matches_filter(topic_filter, topic):
                    session.queue.append((topic, payload))
            self._condition.notify_all()

    def publish(self, client_id: str, topic: str, payload: bytes, *, retain: bool) -> None:
        """Route a message from the connected client `client_id` to every matching session.

        A retained message replaces the previous one on its topic, and an empty
        retained payload clears it, as in MQTT.
        """
        with self._condition:
            self._session(client_id)
            self._route(topic, payload, retain=retain)

    def take(self, client_id: str, timeout_s: float) -> list[tuple[str, bytes]]:
        """Remove and return the queued messages of `client_id`, waiting up to `timeout_s` s for the first.

        Returns only the messages queued when the first one is taken, so handlers that
        publish to their own client cannot keep one `take` running forever.
        """
        deadline = time.monotonic() + timeout_s
        with self._condition:
            session = self._session(client_id)
            while not session.queue:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._condition.wait(remaining)
                session = self._session(client_id)

            messages = list(session.queue)
            session.queue.clear()
            return messages

    def retained(self) -> dict[str, bytes]:
        """Return a copy of the retained messages, by topic."""
        with self._condition:
            return dict(self._retained)

    def _session(self, client_id: str) -> _Session:
        session = self._sessions.get(client_id)
        if session is None:
            raise TransportError(f"client {client_id!r} is not connected to this in-process bus. Call start() first")
        return session

    def _route(self, topic: str, payload: bytes, *, retain: bool) -> None:
        # Callers hold self._condition.
        if retain:
            if payload:
                self._retained[topic] = payload
            else:
                self._retained.pop(topic, None)

        for session in self._sessions.values():
            if any(topic_matches_filter(topic_filter, topic) for topic_filter in session.topic_filters):
                session.queue.append((topic, payload))
        self._condition.notify_all()


class InProcessTransport(Transport):
    """A transport whose broker is an `InProcessBus` in the same process.

    Same contract as the MQTT transport: QoS 1 semantics without loss or duplicates,
    retained messages, a will published on `kill()`, handlers called from `poll`.
    """

    def __init__(self, bus: InProcessBus, client_id: str, will: Will | None = None) -> None:
        super().__init__(client_id, will)
        self._bus = bus
        self._connected = False

    @property
    def connected(self) -> bool:
        """Whether the transport has a session on the bus."""
        return self._connected

    def start(self) -> None:
        """Open a session on the bus and subscribe every filter registered before the start."""
        if self._connected:
            raise TransportError(f"transport {self.client_id!r} is already started")
        self._bus.connect(self.client_id, self.will)
        self._connected = True
        for topic_filter in self._topic_filters():
            self._bus.subscribe(self.client_id, topic_filter)

    def stop(self) -> None:
        """Close the session without publishing the will, and drop the queued inbound messages."""
        if not self._connected:
            return
        self._bus.disconnect(self.client_id, publish_will=False)
        self._connected = False

    def kill(self) -> None:
        """Disconnect abruptly, as a crashed process would: the bus publishes the will."""
        if not self._connected:
            return
        self._bus.disconnect(self.client_id, publish_will=True)
        self._connected = False

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Route `payload` to every matching subscriber now, or raise TransportError if not started."""
        validate_topic_name(topic)
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TransportError(f"invalid payload for {topic!r}: expected bytes, got {type(payload).__name__}")
        self._require_connected("publish")
        self._bus.publish(self.client_id, topic, bytes(payload), retain=retain)

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Register `handler`. For a new filter on a started transport, the bus queues the retained messages it matches.

        A second handler on a known filter gets no retained messages, as with `MqttTransport`.
        """
        validate_topic_filter(topic_filter)
        is_new = self._add_handler(topic_filter, handler)
        if is_new and self._connected:
            self._bus.subscribe(self.client_id, topic_filter)

    def poll(self, timeout_s: float) -> int:
        """Deliver this client's queued messages in FIFO order (see `Transport.poll`)."""
        if timeout_s < 0:
            raise TransportError(f"invalid poll timeout {timeout_s!r} s: expected a value >= 0")
        self._require_connected("poll")

        delivered = 0
        for topic, payload in self._bus.take(self.client_id, timeout_s):
            if self._dispatch(topic, payload):
                delivered += 1
        return delivered

    def _require_connected(self, action: str) -> None:
        if not self._connected:
            raise TransportError(f"cannot {action}: transport {self.client_id!r} is not started. Call start() first")
