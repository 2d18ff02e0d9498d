"""The edge service: runs one edge node over MQTT."""

from __future__ import annotations

import threading

import torch

from edge.node import EdgeNode, offline_will
from modiad.features.presets import service_extractor
from modiad.protocol import Topics
from modiad.runner import install_stop_signals, run_nodes
from modiad.settings import EdgeSettings
from modiad.transport.mqtt import MqttTransport

__all__ = ["run_edge"]


def run_edge(settings: EdgeSettings, *, exit_when_finished: bool = False) -> None:
    """Run the edge until a stop signal (or, with `exit_when_finished`, the cloud's last round)."""
    torch.set_num_threads(settings.torch_threads)
    extractor = service_extractor(settings)
    topics = Topics(settings.topic_root)
    transport = MqttTransport(
        settings.mqtt, client_id=topics.client_id(f"edge-{settings.edge_id}"), will=offline_will(topics, settings.edge_id)
    )
    node = EdgeNode(settings, transport, extractor)

    stop_event = threading.Event()
    install_stop_signals(stop_event)
    transport.start()
    try:
        if exit_when_finished:
            run_nodes([(transport, node)], stop_event=stop_event)
        else:
            run_nodes([(transport, _NeverFinished(node))], stop_event=stop_event)
    finally:
        transport.stop()


class _NeverFinished:
    """Keeps a production edge running after the cloud's run ends; it waits for the next run."""

    finished = False

    def __init__(self, node: EdgeNode) -> None:
        self._node = node

    def start(self) -> None:
        self._node.start()

    def tick(self) -> None:
        self._node.tick()

    def stop(self) -> None:
        self._node.stop()
