"""Fixtures shared by every test file: the loopback Mosquitto broker and per-test topic roots.

Fixtures used by one test file belong in that file.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from brokers import MosquittoBroker, find_mosquitto

from modiad.transport.mqtt import MqttSettings


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """One Mosquitto broker on 127.0.0.1 for the whole session (`.url`, `.port`, `.restart()`)."""
    try:
        find_mosquitto()
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)

    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def topic_root() -> str:
    """A topic prefix no other test uses, so tests sharing the broker never see each other's messages."""
    return f"test/{uuid.uuid4().hex}/modiad/v1"


@pytest.fixture
def mqtt_settings(mosquitto: MosquittoBroker) -> MqttSettings:
    """Settings for the session broker with short timeouts, so failures show quickly."""
    return MqttSettings(
        url=mosquitto.url,
        connect_timeout_s=5.0,
        reconnect_min_delay_s=0.2,
        reconnect_max_delay_s=1.0,
    )
