"""Message transports behind one interface: MQTT (paho-mqtt) and in-process.

Node logic depends only on `Transport`; a service picks the implementation.
"""

from modiad.transport.base import Handler, Transport, Will, topic_matches_filter
from modiad.transport.inprocess import InProcessBus, InProcessTransport
from modiad.transport.mqtt import MqttSettings, MqttTransport, parse_broker_url

__all__ = [
    "Handler",
    "InProcessBus",
    "InProcessTransport",
    "MqttSettings",
    "MqttTransport",
    "Transport",
    "Will",
    "parse_broker_url",
    "topic_matches_filter",
]
