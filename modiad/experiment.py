"""Run a whole fleet (sensors, edges, cloud) in one process over the in-process bus.

Researchers use this to compare schedulers quickly and deterministically; tests use
it to check that MQTT and in-process runs build identical model banks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cloud.coordinator import Coordinator
from cloud.service import build_coordinator
from edge.node import EdgeNode, offline_will
from modiad.features.presets import service_extractor
from modiad.protocol import Topics
from modiad.runner import run_nodes
from modiad.settings import CloudSettings, EdgeSettings, SensorSettings
from modiad.transport.inprocess import InProcessBus, InProcessTransport
from sensors_sim.publisher import SensorNode

__all__ = ["run_inprocess"]

logger = logging.getLogger(__name__)


def run_inprocess(
    cloud_settings: CloudSettings,
    edge_settings: list[EdgeSettings],
    sensor_settings: SensorSettings,
    *,
    results_dir: Path | None = None,
) -> Coordinator:
    """Run every round in this process and return the finished coordinator (bank, metrics).

    torch uses `cloud_settings.torch_threads` threads during the run, as each service
    process does, so the bank matches a multi-process run with the same seed bit for bit.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cloud_settings.torch_threads)
    try:
        return _run_fleet(cloud_settings, edge_settings, sensor_settings, results_dir)
    finally:
        torch.set_num_threads(previous_threads)


def _run_fleet(
    cloud_settings: CloudSettings,
    edge_settings: list[EdgeSettings],
    sensor_settings: SensorSettings,
    results_dir: Path | None,
) -> Coordinator:
    bus = InProcessBus()
    topics = Topics(cloud_settings.topic_root)

    cloud_transport = InProcessTransport(bus, "modiad-cloud")
    coordinator = build_coordinator(cloud_settings, cloud_transport, results_dir=results_dir)

    pairs: list = []
    for settings in edge_settings:
        transport = InProcessTransport(
            bus, f"modiad-edge-{settings.edge_id}", will=offline_will(topics, settings.edge_id)
        )
        node = EdgeNode(settings, transport, service_extractor(settings))
        pairs.append((transport, node))

    sensor_transport = InProcessTransport(bus, "modiad-sensors")
    pairs.append((sensor_transport, SensorNode(sensor_settings, sensor_transport)))
    pairs.append((cloud_transport, coordinator))

    for transport, _ in pairs:
        transport.start()
    try:
        run_nodes(pairs, until="all")
    finally:
        for transport, _ in pairs:
            transport.stop()
    return coordinator
