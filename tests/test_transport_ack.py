"""A QoS 1 message received but not yet handled survives a crash of the receiving process."""

import subprocess
import sys
import textwrap
import time
import uuid

from modiad.transport.mqtt import MqttTransport

CRASHING_RECEIVER = textwrap.dedent(
    """
    import os, sys, time
    from modiad.transport.mqtt import MqttSettings, MqttTransport

    url, client_id, topic = sys.argv[1:4]
    transport = MqttTransport(MqttSettings(url=url), client_id=client_id)
    transport.start()
    transport.subscribe(topic, lambda t, p: None)
    print("ready", flush=True)
    deadline = time.monotonic() + 20
    while transport._inbound.qsize() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    os._exit(9)  # crash before poll() hands the message to a handler
    """
)


def test_unhandled_message_is_redelivered_after_crash(mosquitto, mqtt_settings, topic_root):
    client_id = f"receiver-{uuid.uuid4().hex[:8]}"
    topic = f"{topic_root}/edges/edge-1/assignment"
    receiver = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RECEIVER, mosquitto.url, client_id, topic],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdout.readline().strip() == "ready"

    publisher = MqttTransport(mqtt_settings, client_id=f"publisher-{uuid.uuid4().hex[:8]}")
    publisher.start()
    publisher.publish(topic, b"assignment-bytes")
    assert receiver.wait(timeout=30) == 9
    publisher.stop()

    received = []
    restarted = MqttTransport(mqtt_settings, client_id=client_id)
    restarted.start()
    restarted.subscribe(topic, lambda t, p: received.append(p))
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        restarted.poll(0.2)
    restarted.stop()

    assert received == [b"assignment-bytes"]
