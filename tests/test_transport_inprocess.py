"""Tests of the in-process bus and transport, and of the topic rules both transports share."""

from __future__ import annotations

import functools
import logging
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from modiad.errors import TransportError
from modiad.transport.base import topic_matches_filter, validate_topic_filter, validate_topic_name
from modiad.transport.inprocess import InProcessBus, InProcessTransport

# -- topic matching -------------------------------------------------------------------

# (filter, topic, expected): cases of the MQTT 3.1.1 wildcard rules, including "$" topics.
SPEC_EXAMPLES = [
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("#", "sport/tennis", True),
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/tournament", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("#", "$SYS/broker/uptime", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/broker/uptime", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("a/b", "a/b", True),
    ("a/b", "a/b/c", False),
    ("a/b/c", "a/b", False),
]

TOPIC_LEVELS = st.sampled_from(["a", "b", "", "$SYS", "$x", "a$"])
FILTER_LEVELS = st.sampled_from(["a", "b", "", "$SYS", "+"])


@st.composite
def topic_filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(FILTER_LEVELS, min_size=0, max_size=4))
    if draw(st.booleans()) or not levels:
        levels.append("#")
    topic_filter = "/".join(levels)
    return topic_filter if topic_filter else "+"


@st.composite
def topic_names(draw: st.DrawFn) -> str:
    levels = draw(st.lists(TOPIC_LEVELS, min_size=1, max_size=5))
    topic = "/".join(levels)
    return topic if topic else "a"


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), SPEC_EXAMPLES)
def test_matching_spec_examples(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches_filter(topic_filter, topic) is expected


@settings(max_examples=300, deadline=None)
@given(topic_filter=topic_filters(), topic=topic_names())
def test_matching_agrees_with_paho(topic_filter: str, topic: str) -> None:
    validate_topic_filter(topic_filter)
    validate_topic_name(topic)
    assert topic_matches_filter(topic_filter, topic) == topic_matches_sub(topic_filter, topic)


@pytest.mark.parametrize("topic_filter", ["", "a/#/b", "a#", "a/b#", "a+/b", "a/+b", "++", "a\x00b"])
def test_invalid_filters_rejected(topic_filter: str) -> None:
    with pytest.raises(TransportError, match="invalid topic filter"):
        validate_topic_filter(topic_filter)


@pytest.mark.parametrize("topic", ["", "a/+", "a/#", "#", "a\x00"])
def test_invalid_topic_names_rejected(topic: str) -> None:
    with pytest.raises(TransportError, match="invalid topic"):
        validate_topic_name(topic)


# -- transport behaviour ----------------------------------------------------------------


class Recorder:
    """A handler that stores every (topic, payload) it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))


@pytest.fixture
def bus() -> InProcessBus:
    return InProcessBus()


def started(bus: InProcessBus, client_id: str, will: tuple[str, bytes, bool] | None = None) -> InProcessTransport:
    transport = InProcessTransport(bus, client_id, will=will)
    transport.start()
    return transport


def test_round_trip_with_wildcard(bus: InProcessBus) -> None:
    publisher = started(bus, "publisher")
    subscriber = started(bus, "subscriber")
    recorder = Recorder()
    subscriber.subscribe("root/+/status", recorder)

    publisher.publish("root/edge-1/status", b"one")
    publisher.publish("root/edge-1/other", b"ignored")

    assert subscriber.poll(0) == 1
    assert recorder.messages == [("root/edge-1/status", b"one")]
    assert subscriber.poll(0) == 0


def test_fifo_order_across_publishers(bus: InProcessBus) -> None:
    first = started(bus, "first")
    second = started(bus, "second")
    subscriber = started(bus, "subscriber")
    recorder = Recorder()
    subscriber.subscribe("root/#", recorder)

    expected = []
    for index in range(50):
        publisher, topic = (first, "root/a") if index % 3 else (second, "root/b")
        payload = str(index).encode()
        publisher.publish(topic, payload)
        expected.append((topic, payload))

    assert subscriber.poll(0) == 50
    assert recorder.messages == expected


def record(log: list[tuple[str, str, bytes]], client_id: str, topic: str, payload: bytes) -> None:
    log.append((client_id, topic, payload))


def test_delivery_is_deterministic() -> None:
    def run() -> list[tuple[str, str, bytes]]:
        bus = InProcessBus()
        log: list[tuple[str, str, bytes]] = []
        clients = [started(bus, f"client-{index}") for index in range(3)]
        for client in clients:
            client.subscribe("root/#", functools.partial(record, log, client.client_id))
        for index in range(20):
            clients[index % 3].publish(f"root/{index % 4}", bytes([index]))
        for client in reversed(clients):
            client.poll(0)
        return log

    first_run = run()
    assert len(first_run) == 60
    assert first_run == run()


def test_retained_delivered_on_subscribe(bus: InProcessBus) -> None:
    publisher = started(bus, "publisher")
    publisher.publish("root/rounds/current", b"round 1", retain=True)
    publisher.publish("root/rounds/current", b"round 2", retain=True)
    publisher.publish("root/other", b"not retained")

    subscriber = started(bus, "subscriber")
    recorder = Recorder()
    subscriber.subscribe("root/#", recorder)

    assert subscriber.poll(0) == 1
    assert recorder.messages == [("root/rounds/current", b"round 2")]


def test_retained_for_filter_before_start(bus: InProcessBus) -> None:
    started(bus, "publisher").publish("root/online", b"online", retain=True)

    subscriber = InProcessTransport(bus, "subscriber")
    recorder = Recorder()
    subscriber.subscribe("root/online", recorder)
    subscriber.start()

    assert subscriber.poll(0) == 1
    assert recorder.messages == [("root/online", b"online")]


def test_known_filter_no_retained_replay(bus: InProcessBus) -> None:
    started(bus, "publisher").publish("root/online", b"online", retain=True)
    subscriber = started(bus, "subscriber")
    first = Recorder()
    second = Recorder()

    subscriber.subscribe("root/online", first)
    subscriber.subscribe("root/online", second)

    assert subscriber.poll(0) == 1
    assert first.messages == [("root/online", b"online")]
    assert second.messages == [("root/online", b"online")]
    assert subscriber.poll(0) == 0


def test_empty_retained_payload_clears(bus: InProcessBus) -> None:
    publisher = started(bus, "publisher")
    publisher.publish("root/online", b"online", retain=True)
    assert bus.retained() == {"root/online": b"online"}

    publisher.publish("root/online", b"", retain=True)

    assert bus.retained() == {}


def test_will_published_on_kill(bus: InProcessBus) -> None:
    watcher = started(bus, "watcher")
    recorder = Recorder()
    watcher.subscribe("root/edges/+/online", recorder)
    edge = started(bus, "edge-1", will=("root/edges/edge-1/online", b"offline", True))

    edge.kill()

    assert watcher.poll(0) == 1
    assert recorder.messages == [("root/edges/edge-1/online", b"offline")]
    assert bus.retained() == {"root/edges/edge-1/online": b"offline"}
    with pytest.raises(TransportError, match="not started"):
        edge.publish("root/x", b"after death")


def test_no_will_on_clean_stop(bus: InProcessBus) -> None:
    watcher = started(bus, "watcher")
    recorder = Recorder()
    watcher.subscribe("root/#", recorder)
    edge = started(bus, "edge-1", will=("root/edges/edge-1/online", b"offline", True))

    edge.stop()
    edge.stop()

    assert watcher.poll(0) == 0
    assert recorder.messages == []
    assert bus.retained() == {}


def test_handler_exception_isolated(bus: InProcessBus, caplog: pytest.LogCaptureFixture) -> None:
    publisher = started(bus, "publisher")
    subscriber = started(bus, "subscriber")
    recorder = Recorder()

    def failing(topic: str, payload: bytes) -> None:
        if payload == b"bad":
            raise ValueError("cannot decode")

    subscriber.subscribe("root/#", failing)
    subscriber.subscribe("root/#", recorder)
    publisher.publish("root/a", b"bad")
    publisher.publish("root/a", b"good")

    with caplog.at_level(logging.ERROR, logger="modiad.transport.base"):
        delivered = subscriber.poll(0)

    assert delivered == 2
    assert recorder.messages == [("root/a", b"bad"), ("root/a", b"good")]
    assert subscriber.handler_errors == 1
    assert "root/a" in caplog.text
    assert "cannot decode" in caplog.text


def test_overlapping_filters_call_handler_once(bus: InProcessBus) -> None:
    publisher = started(bus, "publisher")
    subscriber = started(bus, "subscriber")
    recorder = Recorder()
    subscriber.subscribe("root/#", recorder)
    subscriber.subscribe("root/+/status", recorder)

    publisher.publish("root/edge-1/status", b"x")

    assert subscriber.poll(0) == 1
    assert recorder.messages == [("root/edge-1/status", b"x")]


def test_unmatched_message_counted(bus: InProcessBus) -> None:
    publisher = started(bus, "publisher")
    subscriber = started(bus, "subscriber")
    subscriber.subscribe("root/#", Recorder())
    # A filter with no handler cannot be made through the API, so use the bus directly.
    bus.subscribe("subscriber", "other/#")

    publisher.publish("other/topic", b"x")

    assert subscriber.poll(0) == 0
    assert subscriber.unhandled == 1


def test_handler_publishes_wait_next_poll(bus: InProcessBus) -> None:
    client = started(bus, "client")
    seen: list[bytes] = []

    def echo(topic: str, payload: bytes) -> None:
        seen.append(payload)
        if len(payload) < 3:
            client.publish("root/echo", payload + b"!")

    client.subscribe("root/echo", echo)
    client.publish("root/echo", b"a")

    assert client.poll(0) == 1
    assert seen == [b"a"]
    assert client.poll(0) == 1
    assert seen == [b"a", b"a!"]


def test_poll_waits_for_other_thread(bus: InProcessBus) -> None:
    publisher = started(bus, "publisher")
    subscriber = started(bus, "subscriber")
    recorder = Recorder()
    subscriber.subscribe("root/x", recorder)
    timer = threading.Timer(0.1, publisher.publish, args=("root/x", b"late"))

    timer.start()
    began = time.monotonic()
    delivered = subscriber.poll(5.0)
    elapsed = time.monotonic() - began
    timer.join()

    assert delivered == 1
    assert recorder.messages == [("root/x", b"late")]
    assert elapsed < 4.0


def test_poll_times_out_empty(bus: InProcessBus) -> None:
    subscriber = started(bus, "subscriber")
    subscriber.subscribe("root/x", Recorder())

    began = time.monotonic()
    delivered = subscriber.poll(0.05)
    elapsed = time.monotonic() - began

    assert delivered == 0
    assert elapsed >= 0.04


def test_duplicate_client_id_rejected(bus: InProcessBus) -> None:
    started(bus, "edge-1")

    with pytest.raises(TransportError, match="already connected"):
        started(bus, "edge-1")


def test_use_before_start_rejected(bus: InProcessBus) -> None:
    transport = InProcessTransport(bus, "edge-1")

    with pytest.raises(TransportError, match="not started"):
        transport.publish("root/x", b"x")
    with pytest.raises(TransportError, match="not started"):
        transport.poll(0)


def test_restart_after_stop(bus: InProcessBus) -> None:
    publisher = started(bus, "publisher")
    subscriber = started(bus, "subscriber")
    recorder = Recorder()
    subscriber.subscribe("root/x", recorder)
    subscriber.stop()
    publisher.publish("root/x", b"while stopped")

    subscriber.start()
    publisher.publish("root/x", b"after restart")

    assert subscriber.poll(0) == 1
    assert recorder.messages == [("root/x", b"after restart")]


def test_invalid_will_rejected(bus: InProcessBus) -> None:
    with pytest.raises(TransportError, match="invalid topic"):
        InProcessTransport(bus, "edge-1", will=("root/+/online", b"offline", True))
    with pytest.raises(TransportError, match="invalid will payload"):
        InProcessTransport(bus, "edge-1", will=("root/online", "offline", True))  # type: ignore[arg-type]
