"""The MQTT transport: paho-mqtt 2.x (callback API version 2, MQTT 3.1.1) against a real broker.

paho's network thread puts inbound messages on a queue, and `poll` drains that queue
on the caller's thread, so handlers never run on paho's thread. Every publish and
subscription uses QoS 1. With a persistent session (the default), the broker keeps
this client's subscriptions and queues QoS 1 messages while the client is offline.
It delivers them when the client reconnects with the same client id.

After a lost connection, paho reconnects on its own thread. This module picks each
wait (see `ReconnectBackoff`), logs before each retry, and resubscribes every filter
once connected. Brokers resend retained messages on every subscription, so handlers
see retained messages again after each reconnect.

Inbound QoS 1 messages are acknowledged to the broker only after `poll` has handed
them to their handlers (paho's manual_ack mode), so a message still queued when the
process dies is redelivered to the restarted client. Handlers therefore must accept
duplicates, which every MODIAD node does by message id.
"""

from __future__ import annotations

import logging
import queue
import random
import ssl
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from modiad.errors import ConfigError, TransportError
from modiad.transport.base import Handler, Transport, Will, validate_topic_filter, validate_topic_name

__all__ = [
    "MqttSettings",
    "MqttTransport",
    "ReconnectBackoff",
    "parse_broker_url",
]

logger = logging.getLogger(__name__)

MQTT_QOS = 1
"""Quality of service of every publish and subscription: at least once."""

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """Split a broker URL into (host, port, tls).

    Accepted forms: "mqtt://host[:port]" (plain TCP, default port 1883) and
    "mqtts://host[:port]" (TLS, default port 8883). IPv6 hosts go in brackets, as in
    "mqtt://[::1]:1883". Credentials belong in `MqttSettings.username`/`password`,
    never in the URL, so that logged URLs contain no secrets.

    Raises ConfigError for any other form.
    """
    hint = 'expected "mqtt://host:port" or "mqtts://host:port"'
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"invalid broker URL {url!r}, {hint}")

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise ConfigError(f"invalid broker URL {url!r}: {error}. {hint}") from error

    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ConfigError(f"invalid broker URL {url!r}: unsupported scheme {parts.scheme!r}, {hint}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"invalid broker URL for host {parts.hostname!r}: credentials in the URL are not accepted. "
            "Set username and password in the mqtt settings instead"
        )
    if not parts.hostname:
        raise ConfigError(f"invalid broker URL {url!r}: missing host, {hint}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"invalid broker URL {url!r}: unexpected path, query or fragment, {hint}")
    if port == 0:
        raise ConfigError(f"invalid broker URL {url!r}: port 0 is not a broker port, {hint}")

    return parts.hostname, port if port is not None else _DEFAULT_PORTS[scheme], scheme == "mqtts"


class MqttSettings(BaseModel):
    """Connection to one MQTT broker."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        "mqtt://127.0.0.1:1883",
        description='Broker URL: "mqtt://host:port" (plain TCP, default port 1883) or "mqtts://host:port" (TLS, 8883).',
    )
    username: str | None = Field(None, description="User name for broker authentication, or None to connect anonymously.")
    password: SecretStr | None = Field(None, description="Password for `username` (needs a username). It is never logged.")
    tls_ca_file: Path | None = Field(
        None, description="PEM file of the CA certificates that verify the broker (mqtts only), or None for the system CAs."
    )
    tls_cert_file: Path | None = Field(None, description="PEM client certificate for mutual TLS (mqtts only).")
    tls_key_file: Path | None = Field(
        None, description="PEM private key of `tls_cert_file`, or None if the certificate file contains the key."
    )
    keepalive_s: int = Field(
        30, ge=5, le=65535, description="Keepalive interval in seconds. The broker drops a client that stays silent for 1.5 times this."
    )
    connect_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Seconds `start()` keeps trying to connect before it raises. Also the maximum wait for a SUBACK "
        "and for outstanding publishes on `stop()`.",
    )
    reconnect_min_delay_s: float = Field(1.0, gt=0, le=3600, description="Shortest wait before a reconnection attempt, in seconds.")
    reconnect_max_delay_s: float = Field(
        30.0, gt=0, le=3600, description="Longest wait between reconnection attempts, in seconds (the backoff cap)."
    )
    max_payload_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1,
        le=268_435_000,
        description="Maximum payload sent or accepted, in bytes (default 128 MiB, room for a paper-preset "
        "assignment of several classes). Larger inbound payloads are "
        "dropped with a warning, and larger outbound ones raise TransportError.",
    )
    max_queued_messages: int = Field(
        1000,
        ge=0,
        description="Maximum outgoing QoS 1 messages that paho keeps while they are unacknowledged or the "
        "connection is down, so memory stays bounded during a broker outage. A publish beyond it raises "
        "TransportError. 0 means unlimited.",
    )
    persistent_session: bool = Field(
        True,
        description="Keep the broker-side session (subscriptions and QoS 1 messages queued while offline) across "
        "disconnects, which needs a stable client id. False starts a clean session on every connect.",
    )
    ack_after_handling: bool = Field(
        True,
        description="Acknowledge an inbound QoS 1 message only after its handler ran, so a crash before that "
        "gets it redelivered. Turn off for brokers that give up on slow acknowledgements (amqtt 0.12 waits 5 s).",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        try:
            parse_broker_url(url)
        except ConfigError as error:
            raise ValueError(str(error)) from error
        return url.strip()

    @model_validator(mode="after")
    def _check_consistency(self) -> MqttSettings:
        if self.password is not None and self.username is None:
            raise ValueError("mqtt password is set but username is not. Set both or neither")
        if self.reconnect_max_delay_s < self.reconnect_min_delay_s:
            raise ValueError(
                f"reconnect_max_delay_s ({self.reconnect_max_delay_s}) is below reconnect_min_delay_s "
                f"({self.reconnect_min_delay_s}). Raise the maximum or lower the minimum"
            )

        _host, _port, tls = parse_broker_url(self.url)
        tls_files = [name for name in ("tls_ca_file", "tls_cert_file", "tls_key_file") if getattr(self, name) is not None]
        if tls_files and not tls:
            raise ValueError(f"{', '.join(tls_files)} set but url {self.url!r} is plain mqtt://. Use mqtts:// for TLS")
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_key_file is set but tls_cert_file is not. Set the client certificate too")
        return self


class ReconnectBackoff:
    """Capped, randomised exponential backoff between reconnection attempts.

    Attempt n (from 0) waits a uniform random time in [c/2, c] with
    c = min(max_delay_s, min_delay_s * 2**n), but never less than min_delay_s. The
    randomness spreads out the retries of many edges that lost the same broker.
    """

    def __init__(self, min_delay_s: float, max_delay_s: float, rng: random.Random | None = None) -> None:
        self.min_delay_s = min_delay_s
        self.max_delay_s = max_delay_s
        self.attempt = 0
        self._rng = rng if rng is not None else random.Random()

    def next_delay_s(self) -> float:
        """Return the wait before the next attempt, in seconds, and count the attempt."""
        ceiling = min(self.max_delay_s, self.min_delay_s * 2.0 ** min(self.attempt, 60))
        self.attempt += 1
        return max(self.min_delay_s, self._rng.uniform(ceiling / 2.0, ceiling))

    def reset(self) -> None:
        """Start again from the shortest wait (after a successful connection)."""
        self.attempt = 0


class MqttTransport(Transport):
    """A transport over one paho-mqtt client.

    Counters for monitoring: `handler_errors` and `unhandled` (see `Transport`),
    `rejected_oversize` (inbound payloads above `max_payload_bytes`, dropped).

    NOTE: for a topic that matches two subscribed filters, Mosquitto 2.0.11 sends one
    copy but amqtt 0.12.1 sends one per filter, so handlers see the message twice
    there. Avoid overlapping filters, or drop duplicates by message id.
    """

    def __init__(self, settings: MqttSettings, client_id: str, will: Will | None = None) -> None:
        super().__init__(client_id, will)
        self.settings = settings
        self.host, self.port, self.tls = parse_broker_url(settings.url)
        self.rejected_oversize = 0

        self._client: paho.Client | None = None
        # Items: (topic, payload, mid, qos, connection generation); see `_acknowledge`.
        self._inbound: queue.Queue[tuple[str, bytes, int, int, int]] = queue.Queue()
        self._generation = 0
        self._backoff = ReconnectBackoff(settings.reconnect_min_delay_s, settings.reconnect_max_delay_s)
        self._retry_armed = False
        self._connected = False
        self._stopping = False
        self._connack = threading.Event()
        self._connack_failure: str | None = None

        # Subscribe acknowledgements and publish completions arrive on paho's thread.
        self._acks = threading.Condition()
        self._subacks: dict[int, list[Any]] = {}
        self._resubscribe_mids: dict[int, list[str]] = {}
        self._unacked_mids: set[int] = set()
        self._early_acked_mids: set[int] = set()

    @property
    def address(self) -> str:
        """The broker as "host:port", for messages."""
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """Whether the broker has accepted the client's current connection."""
        return self._connected

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Connect to the broker, retrying with backoff for up to `connect_timeout_s` seconds.

        Raises TransportError with the broker's host:port if no connection is
        accepted in time, if the broker rejects the client (bad credentials, client
        id refused), or at once on a TLS error.
        """
        if self._client is not None:
            raise TransportError(f"transport {self.client_id!r} is already started")

        deadline = time.monotonic() + self.settings.connect_timeout_s
        self._stopping = False
        self._connack.clear()
        self._connack_failure = None
        self._backoff.reset()

        client = self._open_socket(deadline)
        self._client = client
        client.loop_start()

        if not self._connack.wait(max(0.0, deadline - time.monotonic())):
            self._abandon_client()
            raise TransportError(
                f"timed out after {self.settings.connect_timeout_s} s waiting for the broker at {self.address} to accept "
                f"client {self.client_id!r}. Check that {self.address} is an MQTT broker"
            )
        if self._connack_failure is not None:
            failure = self._connack_failure
            self._abandon_client()
            raise TransportError(
                f"broker at {self.address} rejected client {self.client_id!r}: {failure}. Check username, password "
                "and the broker's access rules"
            )

    def stop(self) -> None:
        """Wait up to `connect_timeout_s` for outstanding publishes, then disconnect without the will.

        A second call does nothing. Publishes still unacknowledged at the deadline are
        lost (logged as a warning).
        """
        client = self._client
        if client is None:
            return

        if self._connected:
            outstanding = self._wait_for_publishes(time.monotonic() + self.settings.connect_timeout_s)
            if outstanding:
                logger.warning(
                    "client %s: stopping with %d publishes not acknowledged by %s, so they are lost",
                    self.client_id,
                    outstanding,
                    self.address,
                )

        self._stopping = True
        client.disconnect()
        client.loop_stop()
        self._client = None
        self._connected = False
        logger.info("client %s: disconnected from %s", self.client_id, self.address)

    # -- messaging -----------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Hand a QoS 1 message to paho.

        While the connection is down, paho queues the message and sends it after
        reconnecting. While connected, a full outgoing queue of `max_queued_messages`
        makes this call wait, up to `connect_timeout_s`, for the broker to acknowledge
        earlier messages. Raises TransportError if the transport is not started, the
        payload exceeds `max_payload_bytes`, the queue is full while disconnected or
        stays full past that wait, or paho rejects the message.
        """
        validate_topic_name(topic)
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TransportError(f"invalid payload for {topic!r}: expected bytes, got {type(payload).__name__}")
        if len(payload) > self.settings.max_payload_bytes:
            raise TransportError(
                f"payload of {len(payload)} bytes for {topic!r} exceeds max_payload_bytes={self.settings.max_payload_bytes}. "
                "Send less, or raise the limit on every client and the broker"
            )
        client = self._require_client("publish")
        message = bytes(payload)

        deadline: float | None = None
        while True:
            try:
                info = client.publish(topic, message, qos=MQTT_QOS, retain=retain)
            except ValueError as error:
                raise TransportError(f"paho rejected the publish on {topic!r}: {error}") from error
            if info.rc != MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                break

            deadline = deadline if deadline is not None else time.monotonic() + self.settings.connect_timeout_s
            self._wait_for_queue_space(topic, deadline)

        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish on {topic!r} to {self.address} failed: {paho.error_string(info.rc)}")

        self._track_publish(info.mid)
        logger.debug("client %s: published %d bytes on %s (retain=%s)", self.client_id, len(payload), topic, retain)

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Register `handler` and, for a new filter while connected, wait for the broker's SUBACK.

        Filters registered before `start()` or while disconnected are subscribed on
        the next connection. Raises TransportError if the broker rejects the filter
        or does not acknowledge it within `connect_timeout_s`.
        """
        validate_topic_filter(topic_filter)
        is_new = self._add_handler(topic_filter, handler)
        client = self._client
        if not is_new or client is None or not self._connected:
            return

        result, mid = client.subscribe(topic_filter, qos=MQTT_QOS)
        if result == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return  # on_connect subscribes it after the reconnection
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise TransportError(f"subscribe to {topic_filter!r} at {self.address} failed: {paho.error_string(result)}")

        reason_codes = self._wait_for_suback(mid, time.monotonic() + self.settings.connect_timeout_s)
        if reason_codes is None:
            if not self._connected:
                return  # the connection dropped before the SUBACK; on_connect subscribes it again
            raise TransportError(
                f"broker at {self.address} did not acknowledge the subscription to {topic_filter!r} within "
                f"{self.settings.connect_timeout_s} s"
            )
        if any(code.is_failure for code in reason_codes):
            raise TransportError(
                f"broker at {self.address} rejected the subscription to {topic_filter!r} ({reason_codes[0]}). "
                "Check the broker's access rules for this client"
            )

    def poll(self, timeout_s: float) -> int:
        """Deliver queued inbound messages on this thread; see `Transport.poll`."""
        if timeout_s < 0:
            raise TransportError(f"invalid poll timeout {timeout_s!r} s: expected a value >= 0")
        self._require_client("poll")

        try:
            first = self._inbound.get(timeout=timeout_s) if timeout_s > 0 else self._inbound.get_nowait()
        except queue.Empty:
            return 0

        batch = [first]
        for _ in range(self._inbound.qsize()):
            try:
                batch.append(self._inbound.get_nowait())
            except queue.Empty:
                break

        delivered = 0
        for topic, payload, mid, qos, generation in batch:
            if self._dispatch(topic, payload):
                delivered += 1
            self._acknowledge(mid, qos, generation)
        return delivered

    def _acknowledge(self, mid: int, qos: int, generation: int) -> None:
        """Send the PUBACK of a handled message, unless its connection is gone.

        Message ids are per connection: after a reconnect the broker redelivers the
        unacknowledged message with a new id, so an old id must not be acknowledged.
        """
        if not self.settings.ack_after_handling or qos == 0 or generation != self._generation or self._client is None:
            return
        self._client.ack(mid, qos)

    # -- connection set-up ---------------------------------------------------------------

    def _build_client(self) -> paho.Client:
        persistent = self.settings.persistent_session
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=not persistent,
            protocol=paho.MQTTv311,
            manual_ack=self.settings.ack_after_handling,
        )
        # paho 2.2 logs a routine "Client is not connected" at ERROR after every lost
        # connection, so its own log is attached only when someone debugs it.
        paho_logger = logging.getLogger(f"{__name__}.paho")
        if paho_logger.isEnabledFor(logging.DEBUG):
            client.enable_logger(paho_logger)
        client.max_queued_messages_set(self.settings.max_queued_messages)

        if self.settings.username is not None:
            password = self.settings.password.get_secret_value() if self.settings.password is not None else None
            client.username_pw_set(self.settings.username, password)
        if self.tls:
            self._configure_tls(client)
        if self.will is not None:
            will_topic, will_payload, will_retain = self.will
            client.will_set(will_topic, bytes(will_payload), qos=MQTT_QOS, retain=will_retain)

        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        return client

    def _configure_tls(self, client: paho.Client) -> None:
        # NOTE: tests cover only TLS configuration errors here; no test yet connects to a TLS listener.
        files = {
            "tls_ca_file": self.settings.tls_ca_file,
            "tls_cert_file": self.settings.tls_cert_file,
            "tls_key_file": self.settings.tls_key_file,
        }
        try:
            client.tls_set(
                ca_certs=str(files["tls_ca_file"]) if files["tls_ca_file"] else None,
                certfile=str(files["tls_cert_file"]) if files["tls_cert_file"] else None,
                keyfile=str(files["tls_key_file"]) if files["tls_key_file"] else None,
            )
        except (OSError, ValueError) as error:
            configured_files = {name: str(path) for name, path in files.items() if path is not None}
            raise ConfigError(f"TLS set-up for {self.address} failed with files {configured_files}: {error}") from error

    def _open_socket(self, deadline: float) -> paho.Client:
        """Return a client whose TCP (and TLS) connection is open, retrying refused or unreachable brokers until `deadline`.

        Every attempt gets a new client, because paho cannot shorten the socket timeout
        of a client that has tried to connect.
        """
        while True:
            client = self._build_client()
            client.connect_timeout = max(0.1, deadline - time.monotonic())
            try:
                client.connect(self.host, self.port, keepalive=self.settings.keepalive_s)
                return client
            except ssl.SSLError as error:
                raise TransportError(
                    f"TLS handshake with the broker at {self.address} failed: {error}. Check tls_ca_file and the "
                    "broker's certificate"
                ) from error
            except OSError as error:
                delay_s = self._backoff.next_delay_s()
                if time.monotonic() + delay_s >= deadline:
                    raise TransportError(
                        f"could not connect to the broker at {self.address} within {self.settings.connect_timeout_s} s: "
                        f"{error}. Check that the broker runs and that the url is right"
                    ) from error
                logger.info(
                    "client %s: connecting to %s failed (%s); retrying in %.1f s",
                    self.client_id,
                    self.address,
                    error,
                    delay_s,
                )
                time.sleep(delay_s)

    def _abandon_client(self) -> None:
        client = self._client
        self._stopping = True
        self._client = None
        self._connected = False
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def _require_client(self, action: str) -> paho.Client:
        client = self._client
        if client is None:
            raise TransportError(f"cannot {action}: transport {self.client_id!r} is not started. Call start() first")
        return client

    # -- acknowledgements ------------------------------------------------------------------

    def _track_publish(self, mid: int) -> None:
        with self._acks:
            if mid in self._early_acked_mids:
                self._early_acked_mids.discard(mid)
            else:
                self._unacked_mids.add(mid)

    def _wait_for_queue_space(self, topic: str, deadline: float) -> None:
        """Wait briefly for a PUBACK to free the outgoing queue, or raise TransportError if none can come in time."""
        limit = self.settings.max_queued_messages
        if not self._connected:
            raise TransportError(
                f"outgoing queue is full ({limit} messages) publishing on {topic!r} while disconnected from "
                f"{self.address}. Publish again once the broker is reachable, or raise max_queued_messages"
            )
        if time.monotonic() >= deadline:
            raise TransportError(
                f"outgoing queue stayed full ({limit} messages) for {self.settings.connect_timeout_s} s publishing on "
                f"{topic!r}, because the broker at {self.address} acknowledges slower than messages are published"
            )
        with self._acks:
            self._acks.wait(min(0.05, max(0.0, deadline - time.monotonic())))

    def _wait_for_publishes(self, deadline: float) -> int:
        """Wait until every publish is acknowledged or `deadline` passes; return how many are still open."""
        with self._acks:
            while self._unacked_mids and self._connected:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._acks.wait(min(remaining, 0.1))
            return len(self._unacked_mids)

    def _wait_for_suback(self, mid: int, deadline: float) -> list[Any] | None:
        with self._acks:
            while mid not in self._subacks and self._connected:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._acks.wait(min(remaining, 0.1))
            return self._subacks.pop(mid, None)

    # -- paho callbacks: they run on paho's network thread and must not raise --------------

    def _on_pre_connect(self, client: paho.Client, userdata: Any) -> None:
        self._retry_armed = False

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._connack_failure = str(reason_code)
            logger.warning("client %s: broker at %s rejected the connection: %s", self.client_id, self.address, reason_code)
            self._connack.set()
            return

        self._generation += 1
        self._connected = True
        self._backoff.reset()
        logger.info(
            "client %s: connected to %s (session present: %s)", self.client_id, self.address, flags.session_present
        )

        with self._acks:
            self._subacks.clear()  # acknowledgements of the previous connection never come

        topic_filters = self._topic_filters()
        if topic_filters:
            result, mid = client.subscribe([(topic_filter, MQTT_QOS) for topic_filter in topic_filters])
            if mid is not None:
                # Its SUBACK is handled on this thread after this callback returns, so registering now is in time.
                self._resubscribe_mids[mid] = topic_filters
            if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
                logger.warning(
                    "client %s: resubscribing %d filters at %s failed: %s",
                    self.client_id,
                    len(topic_filters),
                    self.address,
                    paho.error_string(result),
                )
        self._connack.set()

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        logger.warning("client %s: reconnecting to %s failed", self.client_id, self.address)
        self._arm_retry(client)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was_connected = self._connected
        self._connected = False
        with self._acks:
            self._acks.notify_all()

        if self._stopping:
            return
        if was_connected:
            logger.warning("client %s: disconnected from %s: %s", self.client_id, self.address, reason_code)
        self._arm_retry(client)

    def _arm_retry(self, client: paho.Client) -> None:
        """Set paho's next reconnection wait from the backoff, once per attempt, because paho may report one failure twice."""
        if self._retry_armed or self._stopping:
            return
        self._retry_armed = True

        delay_s = self._backoff.next_delay_s()
        client.reconnect_delay_set(min_delay=delay_s, max_delay=delay_s)  # type: ignore[arg-type]
        logger.info(
            "client %s: reconnecting to %s in %.1f s (attempt %d)", self.client_id, self.address, delay_s, self._backoff.attempt
        )

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            logger.warning("client %s: dropped a message whose topic is not valid UTF-8", self.client_id)
            self._acknowledge(message.mid, message.qos, self._generation)
            return

        size = len(message.payload)
        if size > self.settings.max_payload_bytes:
            self.rejected_oversize += 1
            logger.warning(
                "client %s: dropped message on %s: payload of %d bytes exceeds max_payload_bytes=%d (%d dropped so far)",
                self.client_id,
                topic,
                size,
                self.settings.max_payload_bytes,
                self.rejected_oversize,
            )
            self._acknowledge(message.mid, message.qos, self._generation)
            return

        self._inbound.put((topic, bytes(message.payload), message.mid, message.qos, self._generation))

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: list[Any], properties: Any) -> None:
        resubscribed = self._resubscribe_mids.pop(mid, None)
        if resubscribed is not None:
            for topic_filter, code in zip(resubscribed, reason_codes, strict=False):
                if code.is_failure:
                    logger.warning(
                        "client %s: broker at %s rejected the resubscription to %s: %s",
                        self.client_id,
                        self.address,
                        topic_filter,
                        code,
                    )
            return

        with self._acks:
            self._subacks[mid] = list(reason_codes)
            self._acks.notify_all()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._acks:
            if mid in self._unacked_mids:
                self._unacked_mids.discard(mid)
            else:
                self._early_acked_mids.add(mid)
            self._acks.notify_all()
