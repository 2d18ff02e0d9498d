"""Tests of the MQTT transport against a real Mosquitto on loopback, and of the embedded amqtt broker."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from brokers import MosquittoBroker
from pydantic import ValidationError

from modiad.broker import free_port, wait_for_port
from modiad.errors import ConfigError, TransportError
from modiad.transport.mqtt import MqttSettings, MqttTransport, ReconnectBackoff, parse_broker_url

REPO_ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 10.0
"""Maximum wait for a message that should arrive, in seconds. Only a failing test waits this long."""


class Recorder:
    """A handler that stores every (topic, payload) it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))


def poll_until(transport: MqttTransport, condition: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    """Poll `transport` until `condition()` is true or `timeout_s` passes, and return the final condition."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        transport.poll(0.05)
    return condition()


def wait_until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def unique_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def transports() -> Iterator[list[MqttTransport]]:
    """Collects the transports a test creates and stops them all at its end."""
    created: list[MqttTransport] = []
    yield created
    for transport in created:
        transport.stop()


@pytest.fixture
def connect(transports: list[MqttTransport], mqtt_settings: MqttSettings) -> Callable[..., MqttTransport]:
    """Start a transport on the session broker; keyword arguments override `mqtt_settings` fields."""

    def make(prefix: str = "client", *, will: tuple[str, bytes, bool] | None = None, client_id: str | None = None,
             **overrides: object) -> MqttTransport:
        settings = mqtt_settings.model_copy(update=overrides)
        transport = MqttTransport(settings, client_id or unique_id(prefix), will=will)
        transports.append(transport)
        transport.start()
        return transport

    return make


# -- settings and URLs (no broker) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1883", ("127.0.0.1", 1883, False)),
        ("mqtt://broker.local", ("broker.local", 1883, False)),
        ("mqtts://broker.local", ("broker.local", 8883, True)),
        ("MQTTS://broker.local:9999/", ("broker.local", 9999, True)),
        ("mqtt://[::1]:1884", ("::1", 1884, False)),
    ],
)
def test_parse_broker_url_valid(url: str, expected: tuple[str, int, bool]) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "127.0.0.1:1883",
        "http://127.0.0.1:1883",
        "tcp://127.0.0.1:1883",
        "mqtt://",
        "mqtt://:1883",
        "mqtt://host:notaport",
        "mqtt://host:70000",
        "mqtt://host:0",
        "mqtt://host:1883/topic",
        "mqtt://host:1883?x=1",
        "mqtt://user:secret@host:1883",
    ],
)
def test_parse_broker_url_invalid(url: str) -> None:
    with pytest.raises(ConfigError, match="invalid broker URL") as raised:
        parse_broker_url(url)
    assert "secret" not in str(raised.value)


def test_settings_reject_bad_url() -> None:
    with pytest.raises(ValidationError, match="unsupported scheme"):
        MqttSettings(url="http://127.0.0.1:1883")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"password": "secret"}, "username is not"),
        ({"tls_ca_file": "/etc/ssl/ca.pem"}, "Use mqtts://"),
        ({"url": "mqtts://h", "tls_key_file": "/k.pem"}, "tls_cert_file is not"),
        ({"reconnect_min_delay_s": 5.0, "reconnect_max_delay_s": 1.0}, "reconnect_max_delay_s"),
        ({"unknown_field": 1}, "Extra inputs"),
    ],
)
def test_settings_reject_inconsistent_fields(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MqttSettings(**fields)


def test_settings_never_show_password() -> None:
    settings = MqttSettings(username="edge", password="hunter2")

    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())


def test_backoff_bounds_and_growth() -> None:
    backoff = ReconnectBackoff(min_delay_s=1.0, max_delay_s=30.0, rng=random.Random(7))

    delays = [backoff.next_delay_s() for _ in range(12)]

    for attempt, delay in enumerate(delays):
        ceiling = min(30.0, 1.0 * 2**attempt)
        assert max(1.0, ceiling / 2) <= delay <= ceiling
    assert delays[0] == 1.0
    assert max(delays[6:]) <= 30.0
    assert min(delays[6:]) >= 15.0
    assert len(set(delays[5:])) > 1

    backoff.reset()
    assert backoff.next_delay_s() == 1.0


# -- against Mosquitto -------------------------------------------------------------------


@pytest.mark.mqtt
def test_round_trip_with_wildcard(connect: Callable[..., MqttTransport], topic_root: str) -> None:
    subscriber = connect("subscriber")
    publisher = connect("publisher")
    recorder = Recorder()
    subscriber.subscribe(f"{topic_root}/edges/+/status", recorder)

    publisher.publish(f"{topic_root}/edges/edge-1/other", b"not matched")
    publisher.publish(f"{topic_root}/edges/edge-1/status", b"hello")

    assert poll_until(subscriber, lambda: len(recorder.messages) >= 1)
    assert recorder.messages == [(f"{topic_root}/edges/edge-1/status", b"hello")]
    assert subscriber.connected


@pytest.mark.mqtt
def test_publish_order_kept(connect: Callable[..., MqttTransport], topic_root: str) -> None:
    subscriber = connect("subscriber")
    publisher = connect("publisher")
    recorder = Recorder()
    subscriber.subscribe(f"{topic_root}/updates", recorder)
    payloads = [f"message {index}".encode() for index in range(200)]

    for payload in payloads:
        publisher.publish(f"{topic_root}/updates", payload)

    assert poll_until(subscriber, lambda: len(recorder.messages) >= len(payloads))
    assert [payload for _topic, payload in recorder.messages] == payloads


@pytest.mark.mqtt
def test_burst_beyond_queue_waits(connect: Callable[..., MqttTransport], topic_root: str) -> None:
    subscriber = connect("subscriber")
    publisher = connect("publisher", max_queued_messages=5)
    recorder = Recorder()
    subscriber.subscribe(f"{topic_root}/samples", recorder)
    payloads = [f"sample {index}".encode() for index in range(100)]

    for payload in payloads:
        publisher.publish(f"{topic_root}/samples", payload)

    assert poll_until(subscriber, lambda: len(recorder.messages) >= len(payloads))
    assert [payload for _topic, payload in recorder.messages] == payloads


@pytest.mark.mqtt
def test_retained_delivered_to_late_subscriber(connect: Callable[..., MqttTransport], topic_root: str) -> None:
    publisher = connect("publisher")
    topic = f"{topic_root}/rounds/current"
    publisher.publish(topic, b"round 1", retain=True)
    publisher.publish(topic, b"round 2", retain=True)
    publisher.stop()  # waits for both PUBACKs, so the broker has stored round 2 by now

    subscriber = connect("subscriber")
    recorder = Recorder()
    subscriber.subscribe(f"{topic_root}/rounds/#", recorder)

    assert poll_until(subscriber, lambda: len(recorder.messages) >= 1)
    subscriber.poll(0.2)
    assert recorder.messages == [(topic, b"round 2")]


@pytest.mark.mqtt
def test_handler_exception_isolated(connect: Callable[..., MqttTransport], topic_root: str) -> None:
    subscriber = connect("subscriber")
    publisher = connect("publisher")
    recorder = Recorder()

    def failing(topic: str, payload: bytes) -> None:
        raise RuntimeError(f"cannot handle {payload!r}")

    subscriber.subscribe(f"{topic_root}/x", failing)
    subscriber.subscribe(f"{topic_root}/x", recorder)
    publisher.publish(f"{topic_root}/x", b"first")
    publisher.publish(f"{topic_root}/x", b"second")

    assert poll_until(subscriber, lambda: len(recorder.messages) >= 2)
    assert [payload for _topic, payload in recorder.messages] == [b"first", b"second"]
    assert subscriber.handler_errors == 2


WILL_CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from modiad.transport.mqtt import MqttSettings, MqttTransport

    url, client_id, will_topic = sys.argv[1:4]
    transport = MqttTransport(MqttSettings(url=url), client_id, will=(will_topic, b"offline", True))
    transport.start()
    print("connected", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.mqtt
def test_will_on_killed_client(
    mosquitto: MosquittoBroker, connect: Callable[..., MqttTransport], topic_root: str
) -> None:
    watcher = connect("watcher")
    recorder = Recorder()
    will_topic = f"{topic_root}/edges/edge-1/online"
    watcher.subscribe(f"{topic_root}/edges/+/online", recorder)

    process = subprocess.Popen(
        [sys.executable, "-c", WILL_CLIENT_SCRIPT, mosquitto.url, unique_id("edge"), will_topic],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "connected"
        assert watcher.poll(0.3) == 0

        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    assert poll_until(watcher, lambda: len(recorder.messages) >= 1)
    assert recorder.messages == [(will_topic, b"offline")]

    late_watcher = connect("late-watcher")
    late_recorder = Recorder()
    late_watcher.subscribe(will_topic, late_recorder)
    assert poll_until(late_watcher, lambda: len(late_recorder.messages) >= 1)
    assert late_recorder.messages == [(will_topic, b"offline")]


@pytest.mark.mqtt
def test_no_will_on_clean_stop(connect: Callable[..., MqttTransport], topic_root: str) -> None:
    watcher = connect("watcher")
    recorder = Recorder()
    watcher.subscribe(f"{topic_root}/#", recorder)
    edge = connect("edge", will=(f"{topic_root}/online", b"offline", True))
    edge.publish(f"{topic_root}/alive", b"yes")

    edge.stop()

    assert poll_until(watcher, lambda: len(recorder.messages) >= 1)
    watcher.poll(0.5)
    assert recorder.messages == [(f"{topic_root}/alive", b"yes")]


@pytest.mark.mqtt
def test_resubscribe_after_broker_restart(
    mosquitto: MosquittoBroker,
    connect: Callable[..., MqttTransport],
    topic_root: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    subscriber = connect("subscriber")
    publisher = connect("publisher")
    recorder = Recorder()
    topic = f"{topic_root}/after-restart"
    subscriber.subscribe(topic, recorder)

    with caplog.at_level(logging.INFO, logger="modiad.transport.mqtt"):
        mosquitto.restart()
        assert wait_until(lambda: subscriber.connected)
        assert wait_until(lambda: publisher.connected)

        # The restarted broker forgot every subscription (no persistence), so a message
        # arrives only if the subscriber subscribed again. Publish until one arrives,
        # because the resubscription may reach the broker after the first publish.
        deadline = time.monotonic() + WAIT_S
        while not recorder.messages and time.monotonic() < deadline:
            publisher.publish(topic, b"after restart")
            subscriber.poll(0.2)

    assert recorder.messages
    assert recorder.messages[0] == (topic, b"after restart")
    address = f"127.0.0.1:{mosquitto.port}"
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert any(f"disconnected from {address}" in record.getMessage() for record in warnings)
    assert any(f"reconnecting to {address}" in record.getMessage() for record in caplog.records)
    assert any(f"{subscriber.client_id}: connected to {address}" in record.getMessage() for record in caplog.records)


@pytest.mark.mqtt
def test_offline_message_arrives_after_reconnect(
    mqtt_settings: MqttSettings,
    connect: Callable[..., MqttTransport],
    transports: list[MqttTransport],
    topic_root: str,
) -> None:
    # The subscriber waits 2 s before reconnecting, long enough to publish while it is away.
    subscriber = connect("subscriber", reconnect_min_delay_s=2.0, reconnect_max_delay_s=2.0)
    publisher = connect("publisher")
    recorder = Recorder()
    topic = f"{topic_root}/assignment"
    subscriber.subscribe(topic, recorder)

    # Another connection with the same client id takes over the session: the broker
    # drops the subscriber's connection but keeps the session (clean session off).
    intruder = MqttTransport(mqtt_settings, subscriber.client_id)
    intruder.start()
    intruder.stop()
    assert wait_until(lambda: not subscriber.connected)

    publisher.publish(topic, b"queued for the offline subscriber")
    publisher.stop()
    assert not subscriber.connected

    assert poll_until(subscriber, lambda: len(recorder.messages) >= 1)
    assert recorder.messages == [(topic, b"queued for the offline subscriber")]
    assert subscriber.connected


@pytest.mark.mqtt
def test_publish_queued_while_broker_down(tmp_path: Path, topic_root: str) -> None:
    broker = MosquittoBroker(tmp_path, persistence=True)
    broker.start()
    settings = MqttSettings(
        url=broker.url,
        connect_timeout_s=5.0,
        reconnect_min_delay_s=0.2,
        reconnect_max_delay_s=0.5,
        max_queued_messages=3,
    )
    subscriber = MqttTransport(settings, unique_id("subscriber"))
    publisher = MqttTransport(settings, unique_id("publisher"))
    recorder = Recorder()
    topic = f"{topic_root}/update"
    try:
        subscriber.start()
        publisher.start()
        subscriber.subscribe(topic, recorder)

        broker.stop()
        assert wait_until(lambda: not publisher.connected)
        assert wait_until(lambda: not subscriber.connected)
        for index in range(3):
            publisher.publish(topic, f"queued {index}".encode())
        with pytest.raises(TransportError, match="queue is full .* while disconnected"):
            publisher.publish(topic, b"one too many")

        broker.start()
        assert poll_until(subscriber, lambda: len(recorder.messages) >= 3)
    finally:
        publisher.stop()
        subscriber.stop()
        broker.stop()

    assert [payload for _topic, payload in recorder.messages] == [b"queued 0", b"queued 1", b"queued 2"]


@pytest.mark.mqtt
def test_eight_megabyte_payload(connect: Callable[..., MqttTransport], topic_root: str) -> None:
    subscriber = connect("subscriber")
    publisher = connect("publisher")
    recorder = Recorder()
    subscriber.subscribe(f"{topic_root}/update/+", recorder)
    payload = random.Random(3).randbytes(8 * 1024 * 1024)

    publisher.publish(f"{topic_root}/update/bagel", payload)

    assert poll_until(subscriber, lambda: len(recorder.messages) >= 1)
    topic, received = recorder.messages[0]
    assert topic == f"{topic_root}/update/bagel"
    assert len(received) == len(payload)
    assert received == payload


@pytest.mark.mqtt
def test_oversize_inbound_rejected(
    connect: Callable[..., MqttTransport], topic_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    subscriber = connect("subscriber", max_payload_bytes=1000)
    publisher = connect("publisher")
    recorder = Recorder()
    subscriber.subscribe(f"{topic_root}/x", recorder)

    with caplog.at_level(logging.WARNING, logger="modiad.transport.mqtt"):
        publisher.publish(f"{topic_root}/x", bytes(1001))
        publisher.publish(f"{topic_root}/x", bytes(1000))
        assert poll_until(subscriber, lambda: len(recorder.messages) >= 1)

    assert recorder.messages == [(f"{topic_root}/x", bytes(1000))]
    assert subscriber.rejected_oversize == 1
    assert "1001 bytes exceeds max_payload_bytes=1000" in caplog.text


@pytest.mark.mqtt
def test_oversize_outbound_rejected(connect: Callable[..., MqttTransport], topic_root: str) -> None:
    publisher = connect("publisher", max_payload_bytes=100)

    with pytest.raises(TransportError, match="exceeds max_payload_bytes=100"):
        publisher.publish(f"{topic_root}/x", bytes(101))


def test_connection_refused_within_timeout() -> None:
    port = free_port()  # nothing listens there
    settings = MqttSettings(
        url=f"mqtt://127.0.0.1:{port}", connect_timeout_s=1.0, reconnect_min_delay_s=0.1, reconnect_max_delay_s=0.3
    )
    transport = MqttTransport(settings, unique_id("lonely"))

    began = time.monotonic()
    with pytest.raises(TransportError) as raised:
        transport.start()
    elapsed = time.monotonic() - began

    assert f"127.0.0.1:{port}" in str(raised.value)
    assert "refused" in str(raised.value).lower()
    assert isinstance(raised.value.__cause__, OSError)
    assert elapsed <= 1.0 + 1.0
    assert not transport.connected


@pytest.mark.mqtt
def test_rejected_client_raises(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path, allow_anonymous=False)
    broker.start()
    transport = MqttTransport(MqttSettings(url=broker.url, connect_timeout_s=5.0), unique_id("anonymous"))
    try:
        with pytest.raises(TransportError, match="rejected client") as raised:
            transport.start()
    finally:
        transport.stop()
        broker.stop()

    assert f"127.0.0.1:{broker.port}" in str(raised.value)
    assert "authorized" in str(raised.value).lower()
    assert not transport.connected


def test_missing_tls_file_raises_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing-ca.pem"
    settings = MqttSettings(url=f"mqtts://127.0.0.1:{free_port()}", tls_ca_file=missing)
    transport = MqttTransport(settings, unique_id("tls"))

    with pytest.raises(ConfigError, match="TLS set-up") as raised:
        transport.start()

    assert str(missing) in str(raised.value)
    assert not transport.connected


def test_use_before_start_rejected() -> None:
    transport = MqttTransport(MqttSettings(), unique_id("idle"))

    with pytest.raises(TransportError, match="not started"):
        transport.publish("a/b", b"x")
    with pytest.raises(TransportError, match="not started"):
        transport.poll(0)


# -- embedded broker ---------------------------------------------------------------------


def test_embedded_broker_round_trip(tmp_path: Path, topic_root: str) -> None:
    port = free_port()
    log_path = tmp_path / "broker.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "modiad.broker", "--port", str(port)],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    settings = MqttSettings(url=f"mqtt://127.0.0.1:{port}", connect_timeout_s=5.0)
    subscriber = MqttTransport(settings, unique_id("subscriber"))
    publisher = MqttTransport(settings, unique_id("publisher"))
    recorder = Recorder()
    payload = random.Random(5).randbytes(1024 * 1024)
    try:
        wait_for_port("127.0.0.1", port, 20.0)
        subscriber.start()
        publisher.start()
        subscriber.subscribe(f"{topic_root}/+/update", recorder)

        publisher.publish(f"{topic_root}/edge-1/update", payload)
        assert poll_until(subscriber, lambda: len(recorder.messages) >= 1)
    finally:
        publisher.stop()
        subscriber.stop()
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=WAIT_S)

    assert recorder.messages == [(f"{topic_root}/edge-1/update", payload)]
    assert exit_code == 0
    log = log_path.read_text()
    assert f"listening on 127.0.0.1:{port}" in log
    assert "embedded broker stopped" in log
