"""The transport interface that node logic talks to, and the parts both transports share.

The cloud coordinator and the edge node are single-threaded state machines, so every
transport hands inbound messages to their handlers on the caller's thread, inside
`Transport.poll`. A handler that raises is logged with its topic and counted in
`handler_errors`; it never stops the transport.

Topic names and filters follow MQTT 3.1.1. Levels are separated by "/". "+" matches
one whole level. "#" matches the rest of the topic, including its parent level, and
must be the last level. A filter that starts with a wildcard does not match topics
that start with "$".
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable

from modiad.errors import TransportError

__all__ = [
    "Handler",
    "MAX_TOPIC_BYTES",
    "Transport",
    "Will",
    "topic_matches_filter",
    "validate_topic_filter",
    "validate_topic_name",
]

logger = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
"""Callback for one inbound message: (topic, payload)."""

Will = tuple[str, bytes, bool]
"""Last-will message: (topic, payload, retain), published by the broker on an abrupt disconnect."""

MAX_TOPIC_BYTES = 65535
"""Maximum length of a topic name or filter, in UTF-8 bytes (the MQTT string length limit)."""


def validate_topic_name(topic: str) -> None:
    """Raise TransportError unless `topic` can be published to (non-empty, no wildcards, no NUL)."""
    _check_topic_text(topic, "topic")
    if "+" in topic or "#" in topic:
        raise TransportError(f"invalid topic {topic!r}: wildcards '+' and '#' are only allowed in subscriptions")


def validate_topic_filter(topic_filter: str) -> None:
    """Raise TransportError unless `topic_filter` is a valid subscription filter.

    "+" and "#" must each fill a whole level, and "#" must be the last level.
    """
    _check_topic_text(topic_filter, "topic filter")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise TransportError(
                f"invalid topic filter {topic_filter!r}: '#' must be a whole level and the last one, as in 'a/b/#'"
            )
        if "+" in level and level != "+":
            raise TransportError(f"invalid topic filter {topic_filter!r}: '+' must be a whole level, as in 'a/+/c'")


def _check_topic_text(text: str, kind: str) -> None:
    if not isinstance(text, str) or not text:
        raise TransportError(f"invalid {kind} {text!r}: expected a non-empty string")
    if "\x00" in text:
        raise TransportError(f"invalid {kind} {text!r}: contains a NUL character")
    if len(text.encode("utf-8")) > MAX_TOPIC_BYTES:
        raise TransportError(f"invalid {kind} starting {text[:40]!r}: longer than {MAX_TOPIC_BYTES} UTF-8 bytes")


def topic_matches_filter(topic_filter: str, topic: str) -> bool:
    """Return whether `topic` matches the subscription filter `topic_filter` (MQTT 3.1.1 rules).

    Both arguments are assumed valid (see `validate_topic_filter`, `validate_topic_name`).
    """
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")

    # A wildcard in the first level never matches broker-internal topics such as "$SYS/...".
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False

    for index, filter_level in enumerate(filter_levels):
        if filter_level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if filter_level != "+" and filter_level != topic_levels[index]:
            return False

    return len(filter_levels) == len(topic_levels)


class Transport(ABC):
    """A client of a publish/subscribe broker, seen by node logic.

    Implementations keep a table of (filter, handler) pairs and call `_dispatch` for
    every inbound message from inside `poll`, so handlers always run on the thread
    that calls `poll`. Counters:

    - `handler_errors`: handler calls that raised (logged with the topic).
    - `unhandled`: inbound messages that matched no handler when they were polled.
    """

    client_id: str

    def __init__(self, client_id: str, will: Will | None = None) -> None:
        if not isinstance(client_id, str) or not client_id or len(client_id.encode("utf-8")) > MAX_TOPIC_BYTES:
            raise TransportError(f"invalid client id {client_id!r}: expected a non-empty string")
        if will is not None:
            _check_will(will)

        self.client_id = client_id
        self.will = will
        self.handler_errors = 0
        self.unhandled = 0
        self._handlers: dict[str, list[Handler]] = {}
        self._handlers_lock = threading.Lock()

    @abstractmethod
    def start(self) -> None:
        """Connect to the broker, or raise TransportError if that fails."""

    @abstractmethod
    def stop(self) -> None:
        """Disconnect cleanly, so the broker does not publish the will. A second call does nothing."""

    @abstractmethod
    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish `payload` on `topic` with QoS 1. With `retain`, the broker keeps it for later subscribers."""

    @abstractmethod
    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Call `handler` from `poll` for every message whose topic matches `topic_filter` ("+" and "#" allowed)."""

    @abstractmethod
    def poll(self, timeout_s: float) -> int:
        """Deliver pending inbound messages to their handlers on this thread.

        Waits up to `timeout_s` seconds for the first message, then delivers that one
        and every message already waiting. Returns how many messages reached at least
        one handler.
        """

    # -- shared helpers for implementations ----------------------------------------

    def _add_handler(self, topic_filter: str, handler: Handler) -> bool:
        """Record a handler, and return True if `topic_filter` is new to this transport."""
        validate_topic_filter(topic_filter)
        if not callable(handler):
            raise TransportError(f"handler for {topic_filter!r} is not callable: got {type(handler).__name__}")

        with self._handlers_lock:
            is_new = topic_filter not in self._handlers
            self._handlers.setdefault(topic_filter, []).append(handler)
        return is_new

    def _topic_filters(self) -> list[str]:
        """Return every subscribed filter, in the order of first subscription."""
        with self._handlers_lock:
            return list(self._handlers)

    def _dispatch(self, topic: str, payload: bytes) -> bool:
        """Call every handler whose filter matches `topic`, and return whether there was one.

        Handlers run in subscription order. One message reaches each matching handler
        once, even when several of its filters match the topic.
        """
        handlers: list[Handler] = []
        with self._handlers_lock:
            for topic_filter, filter_handlers in self._handlers.items():
                if not topic_matches_filter(topic_filter, topic):
                    continue
                for handler in filter_handlers:
                    if handler not in handlers:
                        handlers.append(handler)

        if not handlers:
            self.unhandled += 1
            logger.debug("client %s: no handler for message on %s (%d bytes), dropped", self.client_id, topic, len(payload))
            return False

        for handler in handlers:
            try:
                handler(topic, payload)
            except Exception:
                self.handler_errors += 1
                logger.exception(
                    "client %s: handler %s failed on message from %s (%d bytes), continuing",
                    self.client_id,
                    getattr(handler, "__qualname__", repr(handler)),
                    topic,
                    len(payload),
                )
        return True


def _check_will(will: Will) -> None:
    if not isinstance(will, tuple) or len(will) != 3:
        raise TransportError(f"invalid will {will!r}: expected a tuple (topic, payload, retain)")
    topic, payload, retain = will
    validate_topic_name(topic)
    if not isinstance(payload, (bytes, bytearray)):
        raise TransportError(f"invalid will payload for {topic!r}: expected bytes, got {type(payload).__name__}")
    if not isinstance(retain, bool):
        raise TransportError(f"invalid will retain flag for {topic!r}: expected bool, got {retain!r}")
