"""Sensor simulator node: replays a dataset's training split as the online stream.

The packets of every round are computed up front from the seed (class partition
over edges, even split of each class's samples, Dirichlet class mix per packet).
When the cloud opens round r, the node publishes round r's samples to each edge
and then the list of their ids, so edges know when the packet is complete. A
sample file that cannot be read is skipped with a logged reason and left out of
the list, and the rest of the packet still goes out.
"""

from __future__ import annotations

import logging
from modiad.codec import decode, encode
from modiad.dataset import list_classes, list_samples, read_sample
from modiad.errors import ConfigError, DatasetError, ProtocolError
from modiad.protocol import PacketHeader, RoundHeader, SampleHeader, Topics
from modiad.rejections import RejectionLog
from modiad.settings import SensorSettings
from modiad.transport.base import Transport

from sensors_sim.stream import build_schedule, partition_classes, split_sources

__all__ = ["SensorNode"]

logger = logging.getLogger(__name__)

MAX_ROUND_PAYLOAD_BYTES = 1024 * 1024
"""Largest round announcement accepted; these messages are a few hundred bytes."""


class SensorNode:
    """Publishes each round's packets in lock-step with the cloud's rounds."""

    def __init__(self, settings: SensorSettings, transport: Transport) -> None:
        self.settings = settings
        self.transport = transport
        self.topics = Topics(settings.topic_root)
        self.rejections = RejectionLog(logger)
        self.skipped_files = 0
        self.published_samples = 0
        self.finished = False
        self._published_rounds: set[int] = set()
        self._refs: dict = {}
        self.schedule = self._build_schedule()

    def _build_schedule(self) -> list[dict[str, list[tuple[str, str]]]]:
        available = list_classes(self.settings.data_root)
        classes = list(self.settings.classes) or available
        unknown = sorted(set(classes) - set(available))
        if unknown:
            raise DatasetError(
                f"unknown classes {unknown} in sensor settings; {self.settings.data_root} contains {available}"
            )
        train_ids: dict[str, list[str]] = {}
        for class_name in sorted(classes):
            refs = list_samples(self.settings.data_root, class_name, "train")
            self._refs.update({ref.sample_id: ref for ref in refs})
            train_ids[class_name] = [ref.sample_id for ref in refs]

        edges = list(self.settings.edges)
        if len(set(edges)) != len(edges):
            raise ConfigError(f"sensor settings list an edge twice: {edges}")
        partition = partition_classes(
            sorted(classes),
            edges,
            classes_per_edge=self.settings.classes_per_edge,
            edges_per_class=self.settings.edges_per_class,
        )
        sources = split_sources(train_ids, partition, seed=self.settings.seed)
        return build_schedule(
            sources,
            rounds=self.settings.rounds,
            packet_size=self.settings.packet_size,
            dirichlet_alpha=self.settings.dirichlet_alpha,
            seed=self.settings.seed,
        )

    def start(self) -> None:
        """Follow the cloud's round announcements."""
        self.transport.subscribe(self.topics.round_current, self._on_round)
        logger.info(
            "sensors started: %d edges, %d rounds scheduled, packet size %d, data %s",
            len(self.settings.edges),
            len(self.schedule),
            self.settings.packet_size,
            self.settings.data_root,
        )

    def tick(self) -> None:
        """Nothing runs on a timer; packets follow round announcements."""

    def stop(self) -> None:
        logger.info(
            "sensors stopped: %d samples published, %d files skipped, rejected inputs: %s",
            self.published_samples,
            self.skipped_files,
            dict(self.rejections.counts),
        )

    def _on_round(self, topic: str, payload: bytes) -> None:
        try:
            header, _ = decode(payload, RoundHeader, max_payload_bytes=MAX_ROUND_PAYLOAD_BYTES)
        except ProtocolError as error:
            self.rejections.reject("round", topic, str(error))
            return
        if header.phase == "finished":
            self.finished = True
            return
        if header.phase != "status" or header.round in self._published_rounds:
            return
        self.publish_round(header.round)

    def publish_round(self, round_index: int) -> None:
        """Publish round `round_index`'s (1-based) packets; rounds past the schedule get empty packets."""
        self._published_rounds.add(round_index)
        packets = self.schedule[round_index - 1] if 1 <= round_index <= len(self.schedule) else {}
        for edge_id in self.settings.edges:
            sent_ids = [self._publish_sample(edge_id, round_index, class_name, sample_id)
                        for class_name, sample_id in packets.get(edge_id, [])]
            sample_ids = [sample_id for sample_id in sent_ids if sample_id is not None]
            packet = PacketHeader(edge_id=edge_id, round=round_index, sample_ids=sample_ids)
            self.transport.publish(self.topics.packet(edge_id), encode(packet))
        logger.info("round %d: packets sent to %d edges", round_index, len(self.settings.edges))

    def _publish_sample(self, edge_id: str, round_index: int, class_name: str, sample_id: str) -> str | None:
        try:
            sample = read_sample(self._refs[sample_id])
        except DatasetError as error:
            self.skipped_files += 1
            logger.warning("sample %s skipped: %s", sample_id, error)
            return None
        height, width = sample.rgb.shape[:2]
        header = SampleHeader(
            edge_id=edge_id,
            round=round_index,
            sample_id=sample_id,
            class_name=class_name,
            height=height,
            width=width,
        )
        self.transport.publish(self.topics.sample(edge_id), encode(header, {"rgb": sample.rgb, "xyz": sample.xyz}))
        self.published_samples += 1
        return sample_id
