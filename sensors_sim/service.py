"""The sensor simulator service: replays a dataset over MQTT in lock-step with the cloud."""

from __future__ import annotations

import threading

from modiad.protocol import Topics
from modiad.runner import install_stop_signals, run_nodes
from modiad.settings import SensorSettings
from modiad.transport.mqtt import MqttTransport

from sensors_sim.publisher import SensorNode

__all__ = ["run_sensors"]


def run_sensors(settings: SensorSettings) -> None:
    """Run until the cloud announces its last round finished, or a stop signal arrives."""
    transport = MqttTransport(settings.mqtt, client_id=Topics(settings.topic_root).client_id("sensors"))
    node = SensorNode(settings, transport)
    stop_event = threading.Event()
    install_stop_signals(stop_event)
    transport.start()
    try:
        run_nodes([(transport, node)], stop_event=stop_event)
    finally:
        transport.stop()
