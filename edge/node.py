"""The edge node: a transport-agnostic state machine.

Inbound: samples and packet lists from sensors, the cloud's round announcements and
assignments. Outbound: liveness, one status report per round, one update per
assigned class. Every inbound message is validated; a bad one is counted, logged
and dropped without touching the node's state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge.buffer import SampleBuffer
from modiad.codec import TensorSpec, check_tensors, encode
from modiad.errors import DatasetError, ProtocolError, TransportError
from modiad.features.base import FeatureExtractor
from modiad.features.cache import FeatureCache
from modiad.inbound import InboundDecoder
from modiad.mapper import MapperPair, expected_shapes, load_pair_state, pair_state
from modiad.protocol import (
    AssignmentHeader,
    OnlineHeader,
    PacketHeader,
    RoundHeader,
    SampleHeader,
    StatusHeader,
    Topics,
    UpdateHeader,
    sample_tensor_specs,
)
from modiad.rejections import RejectionLog
from modiad.sample import Sample
from modiad.settings import EdgeSettings
from modiad.training import train_local, update_seed
from modiad.transport.base import Transport

__all__ = ["EdgeNode", "offline_will"]

logger = logging.getLogger(__name__)

def offline_will(topics: Topics, edge_id: str) -> tuple[str, bytes, bool]:
    """Return the (topic, payload, retain) last-will that marks this edge offline."""
    return topics.online(edge_id), encode(OnlineHeader(edge_id=edge_id, state="offline")), True


class EdgeNode:
    """One edge gateway's logic; `start`, then call `tick` after every `transport.poll`."""

    def __init__(
        self,
        settings: EdgeSettings,
        transport: Transport,
        extractor: FeatureExtractor,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.edge_id = settings.edge_id
        self.transport = transport
        self.extractor = extractor
        self.topics = Topics(settings.topic_root)
        self.clock = clock
        self.buffer = SampleBuffer(Path(settings.state_dir) / "buffer")
        self.rejections = RejectionLog(logger)
        self.feature_cache = FeatureCache(Path(settings.state_dir) / "feature-cache", max_bytes=settings.feature_cache_bytes)
        self.updates_sent = 0

        self._inbound = InboundDecoder(self.rejections, settings.max_payload_bytes)
        self._packets: dict[int, list[str]] = {}
        self._rejected_samples: set[str] = set()
        self._pending_status_round: int | None = None
        self._status_wait_started = 0.0
        self._model_versions: dict[str, int] = {}
        self.finished = False

    @property
    def extractions(self) -> int:
        """Feature extractions this process ran; a sample already buffered or cached costs none."""
        return self.feature_cache.extractions

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to this edge's inbound topics and announce it online."""
        self.transport.subscribe(self.topics.sample(self.edge_id), self._on_sample)
        self.transport.subscribe(self.topics.packet(self.edge_id), self._on_packet)
        self.transport.subscribe(self.topics.round_current, self._on_round)
        self.transport.subscribe(self.topics.assignment(self.edge_id), self._on_assignment)
        self.transport.publish(
            self.topics.online(self.edge_id), encode(OnlineHeader(edge_id=self.edge_id, state="online")), retain=True
        )
        logger.info(
            "edge %s started: capacity %d, buffer contains %s", self.edge_id, self.settings.capacity, self.buffer.counts()
        )

    def stop(self) -> None:
        """Announce a clean shutdown (the will covers crashes)."""
        self.transport.publish(
            self.topics.online(self.edge_id), encode(OnlineHeader(edge_id=self.edge_id, state="offline")), retain=True
        )
        logger.info("edge %s stopped; rejected inputs: %s", self.edge_id, dict(self.rejections.counts))

    def tick(self) -> None:
        """Send the pending status report once its packet is complete or its wait ran out."""
        if self._pending_status_round is None:
            return
        round_index = self._pending_status_round
        if self.settings.wait_for_packet and not self._packet_complete(round_index):
            waited = self.clock() - self._status_wait_started
            if waited < self.settings.packet_wait_s:
                return
            logger.warning(
                "edge %s: packet of round %d incomplete after %.0f s; reporting what the buffer contains",
                self.edge_id,
                round_index,
                waited,
            )
        self._send_status(round_index)

    # -- inbound handlers ----------------------------------------------------------

    def _decode(self, topic: str, payload: bytes, header_model: type) -> tuple | None:
        return self._inbound.decode(topic, payload, header_model)

    def _on_sample(self, topic: str, payload: bytes) -> None:
        decoded = self._decode(topic, payload, SampleHeader)
        if decoded is None:
            return
        header, tensors = decoded
        try:
            if header.edge_id != self.edge_id:
                raise ProtocolError(f"sample is addressed to edge {header.edge_id!r}, not {self.edge_id!r}")
            if self.settings.classes and header.class_name not in self.settings.classes:
                raise ProtocolError(
                    f"class {header.class_name!r} is not among this edge's classes {self.settings.classes}; "
                    "fix the sensor's class name or add it to the edge's `classes` setting"
                )
            check_tensors(tensors, sample_tensor_specs(header.height, header.width))
        except ProtocolError as error:
            self.rejections.reject("sample", topic, f"sample {header.sample_id}: {error}")
            self._rejected_samples.add(header.sample_id)
            return
        if header.sample_id in self.buffer:
            logger.debug("sample %s already buffered; redelivery ignored", header.sample_id)
            return

        xyz = tensors["xyz"]
        xyz = np.where(np.isfinite(xyz), xyz, 0.0).astype(np.float32)
        sample = Sample(sample_id=header.sample_id, class_name=header.class_name, rgb=tensors["rgb"], xyz=xyz)
        try:
            maps = self.feature_cache.get_or_extract(sample.sample_id, self.extractor, sample.rgb, sample.xyz)
        except DatasetError as error:
            self.rejections.reject("sample", topic, f"sample {header.sample_id}: {error}")
            self._rejected_samples.add(header.sample_id)
            return
        if not maps.foreground.any():
            # Training and scoring use object cells only, so such a sample adds nothing.
            self.rejections.reject(
                "sample", topic, f"sample {header.sample_id}: no valid object points after background removal"
            )
            self._rejected_samples.add(header.sample_id)
            return
        self.buffer.add(
            sample,
            maps,
            round_index=header.round,
            arrival=self.buffer.next_arrival,
            feature_identity=self.extractor.identity,
        )

    def _on_packet(self, topic: str, payload: bytes) -> None:
        decoded = self._decode(topic, payload, PacketHeader)
        if decoded is None:
            return
        header, _ = decoded
        if header.edge_id != self.edge_id:
            self.rejections.reject("packet", topic, f"packet is addressed to edge {header.edge_id!r}")
            return
        self._packets[header.round] = list(header.sample_ids)

    def _on_round(self, topic: str, payload: bytes) -> None:
        decoded = self._decode(topic, payload, RoundHeader)
        if decoded is None:
            return
        header, _ = decoded
        if header.phase == "finished":
            logger.info("edge %s: the cloud finished after round %d", self.edge_id, header.round)
            self.finished = True
            return
        if header.phase != "status":
            return
        self._pending_status_round = header.round
        self._status_wait_started = self.clock()

    def _on_assignment(self, topic: str, payload: bytes) -> None:
        decoded = self._decode(topic, payload, AssignmentHeader)
        if decoded is None:
            return
        header, tensors = decoded
        try:
            self._check_assignment(header, tensors)
        except ProtocolError as error:
            self.rejections.reject("assignment", topic, str(error))
            return
        if self._pending_status_round == header.round:
            self._pending_status_round = None

        for assignment in header.classes:
            self._train_and_upload(header, assignment, tensors)

    # -- steps -------------------------------------------------------------------

    def _packet_complete(self, round_index: int) -> bool:
        sample_ids = self._packets.get(round_index)
        if sample_ids is None:
            return False
        return all(sample_id in self.buffer or sample_id in self._rejected_samples for sample_id in sample_ids)

    def _send_status(self, round_index: int) -> None:
        counts = self.buffer.counts()
        status = StatusHeader(
            edge_id=self.edge_id,
            round=round_index,
            counts=counts,
            capacity=self.settings.capacity,
            feature_identity=self.extractor.identity,
            model_versions=self._model_versions,
        )
        self.transport.publish(self.topics.status(self.edge_id), encode(status))
        self._pending_status_round = None
        logger.info("edge %s: status of round %d sent: %s", self.edge_id, round_index, counts)

    def _check_assignment(self, header: AssignmentHeader, tensors: dict[str, np.ndarray]) -> None:
        if header.edge_id != self.edge_id:
            raise ProtocolError(f"assignment is addressed to edge {header.edge_id!r}, not {self.edge_id!r}")
        if (header.dim_2d, header.dim_3d) != (self.extractor.dim_2d, self.extractor.dim_3d):
            raise ProtocolError(
                f"assignment has mapper dims {header.dim_2d}/{header.dim_3d} but this edge's features are "
                f"{self.extractor.dim_2d}/{self.extractor.dim_3d}; run the same feature preset on cloud and edges"
            )
        if len(header.classes) > self.settings.capacity:
            raise ProtocolError(f"assignment has {len(header.classes)} classes, above this edge's capacity {self.settings.capacity}")
        counts = self.buffer.counts()
        specs: dict[str, TensorSpec] = {}
        shapes = expected_shapes(header.dim_2d, header.dim_3d)
        for assignment in header.classes:
            if counts.get(assignment.class_name, 0) == 0:
                raise ProtocolError(f"assignment asks for class {assignment.class_name!r}, but this edge has no samples of it")
            for name, shape in shapes.items():
                specs[f"{assignment.class_name}/{name}"] = TensorSpec("float32", shape)
        check_tensors(tensors, specs)

    def _train_and_upload(self, header: AssignmentHeader, assignment, tensors: dict[str, np.ndarray]) -> None:
        class_name = assignment.class_name
        prefix = f"{class_name}/"
        state = {name[len(prefix) :]: array for name, array in tensors.items() if name.startswith(prefix)}
        pair = load_pair_state(MapperPair(header.dim_2d, header.dim_3d), state)

        f2d, f3d, num_samples = self.buffer.training_features(class_name)
        if f2d.shape[0] == 0:
            logger.error("edge %s: class %s has no foreground pixels to train on; no update sent", self.edge_id, class_name)
            return
        started = time.perf_counter()
        result = train_local(
            pair,
            f2d,
            f3d,
            iterations=assignment.iterations,
            learning_rate=assignment.learning_rate,
            batch_pixels=assignment.batch_pixels,
            seed=update_seed(self.settings.seed, header.round, self.edge_id, class_name),
        )
        update = UpdateHeader(
            edge_id=self.edge_id,
            round=header.round,
            class_name=class_name,
            base_version=assignment.model_version,
            num_samples=num_samples,
            num_pixels=result.num_pixels,
            final_loss=result.final_loss,
        )
        try:
            self.transport.publish(self.topics.update(self.edge_id, class_name), encode(update, pair_state(result.pair)))
        except TransportError as error:
            logger.error("edge %s: update of class %s in round %d not sent: %s", self.edge_id, class_name, header.round, error)
            return
        self._model_versions[class_name] = assignment.model_version
        self.updates_sent += 1
        logger.info(
            "edge %s: round %d class %s trained on %d samples (%d pixels) in %.1f s, loss %.4f; update sent",
            self.edge_id,
            header.round,
            class_name,
            num_samples,
            result.num_pixels,
            time.perf_counter() - started,
            result.final_loss,
        )

