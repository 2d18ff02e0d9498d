"""Edge node and sensor simulator over the in-process bus, with the real embedded features."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from edge.node import EdgeNode
from modiad.codec import decode, encode
from modiad.dataset import list_samples, read_sample
from modiad.errors import DatasetError
from modiad.features.presets import build_extractor
from modiad.mapper import expected_shapes, init_mapper_pair, pair_state
from modiad.protocol import (
    AssignmentHeader,
    ClassAssignment,
    PacketHeader,
    RoundHeader,
    SampleHeader,
    StatusHeader,
    Topics,
    UpdateHeader,
)
from modiad.settings import EdgeSettings, SensorSettings
from modiad.transport.inprocess import InProcessBus, InProcessTransport
from sensors_sim.publisher import SensorNode
from sensors_sim.synthetic import CLASS_NAMES, generate_dataset

CLASSES = list(CLASS_NAMES[:2])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edge-data") / "synthetic"
    generate_dataset(root, profile="small", seed=1, classes=CLASSES)
    return root


@pytest.fixture(scope="module")
def extractor():
    return build_extractor(EdgeSettings().features)


class EdgeHarness:
    """One edge node plus a client that plays sensor and cloud."""

    def __init__(self, state_dir: Path, extractor, bus: InProcessBus | None = None) -> None:
        self.bus = bus or InProcessBus()
        self.settings = EdgeSettings(transport="inprocess", edge_id="edge-1", state_dir=state_dir, capacity=2)
        self.topics = Topics(self.settings.topic_root)
        self.transport = InProcessTransport(self.bus, f"edge-{id(self)}")
        self.node = EdgeNode(self.settings, self.transport, extractor)
        self.peer = InProcessTransport(self.bus, f"peer-{id(self)}")
        self.statuses: list[StatusHeader] = []
        self.updates: list[tuple[UpdateHeader, dict]] = []
        self.transport.start()
        self.peer.start()
        self.peer.subscribe(self.topics.status("edge-1"), self._on_status)
        self.peer.subscribe(f"{self.settings.topic_root}/edges/edge-1/update/+", self._on_update)
        self.node.start()

    def _on_status(self, topic, payload):
        self.statuses.append(decode(payload, StatusHeader, max_payload_bytes=1 << 20)[0])

    def _on_update(self, topic, payload):
        self.updates.append(decode(payload, UpdateHeader, max_payload_bytes=1 << 28))

    def pump(self) -> None:
        for _ in range(4):
            self.transport.poll(0)
            self.node.tick()
            self.peer.poll(0)

    def send_sample(self, sample, round_index: int = 1, **header_changes) -> bytes:
        height, width = sample.rgb.shape[:2]
        fields = dict(edge_id="edge-1", round=round_index, sample_id=sample.sample_id,
                      class_name=sample.class_name, height=height, width=width)
        fields.update(header_changes)
        payload = encode(SampleHeader(**fields), {"rgb": sample.rgb, "xyz": sample.xyz})
        self.peer.publish(self.topics.sample("edge-1"), payload)
        return payload

    def open_round(self, round_index: int) -> None:
        header = RoundHeader(round=round_index, phase="status", total_rounds=5)
        self.peer.publish(self.topics.round_current, encode(header), retain=True)


def _train_samples(dataset: Path, class_name: str, count: int):
    return [read_sample(ref) for ref in list_samples(dataset, class_name, "train")[:count]]


def test_samples_persist_across_restart(tmp_path, dataset, extractor):
    edge = EdgeHarness(tmp_path / "edge", extractor)
    samples = _train_samples(dataset, CLASSES[0], 2) + _train_samples(dataset, CLASSES[1], 1)
    for sample in samples:
        edge.send_sample(sample)
    edge.pump()
    assert edge.node.buffer.counts() == {CLASSES[0]: 2, CLASSES[1]: 1}
    assert edge.node.extractions == 3

    restarted = EdgeHarness(tmp_path / "edge", extractor)
    assert restarted.node.buffer.counts() == {CLASSES[0]: 2, CLASSES[1]: 1}

    restarted.send_sample(samples[0])  # a redelivery after the restart
    restarted.pump()
    assert restarted.node.extractions == 0
    assert restarted.node.buffer.counts()[CLASSES[0]] == 2


def test_bad_samples_are_rejected_and_intake_continues(tmp_path, dataset, extractor, caplog):
    edge = EdgeHarness(tmp_path / "edge", extractor)
    good = _train_samples(dataset, CLASSES[0], 2)
    caplog.set_level(logging.WARNING)

    edge.send_sample(good[0], height=good[0].rgb.shape[0] + 1)  # declared size differs from the tensors
    edge.peer.publish(edge.topics.sample("edge-1"), b"\x00\x00\x00\x02{}")
    wrong_dtype = encode(
        SampleHeader(edge_id="edge-1", round=1, sample_id="x/train/good/9", class_name=CLASSES[0], height=8, width=8),
        {"rgb": np.zeros((8, 8, 3), np.float32), "xyz": np.zeros((8, 8, 3), np.float32)},
    )
    edge.peer.publish(edge.topics.sample("edge-1"), wrong_dtype)
    edge.send_sample(good[1])
    edge.pump()

    assert edge.node.rejections.counts["sample"] == 2
    assert edge.node.rejections.counts["SampleHeader"] == 1
    assert edge.node.buffer.counts() == {CLASSES[0]: 1}
    assert "rejected sample" in caplog.text


def test_non_finite_points_become_missing(tmp_path, dataset, extractor):
    edge = EdgeHarness(tmp_path / "edge", extractor)
    sample = _train_samples(dataset, CLASSES[0], 1)[0]
    xyz = sample.xyz.copy()
    xyz[:4, :4] = np.nan
    xyz[4:6, :4] = np.inf
    edge.send_sample(type(sample)(sample.sample_id, sample.class_name, sample.rgb, xyz))
    edge.pump()

    f2d, f3d, count = edge.node.buffer.training_features(CLASSES[0])
    assert count == 1
    assert np.all(np.isfinite(f2d))
    assert np.all(np.isfinite(f3d))


def test_status_waits_for_the_packet(tmp_path, dataset, extractor):
    edge = EdgeHarness(tmp_path / "edge", extractor)
    samples = _train_samples(dataset, CLASSES[0], 2)
    edge.open_round(1)
    edge.send_sample(samples[0])
    edge.pump()
    assert edge.statuses == []

    packet = PacketHeader(edge_id="edge-1", round=1, sample_ids=[s.sample_id for s in samples])
    edge.peer.publish(edge.topics.packet("edge-1"), encode(packet))
    edge.pump()
    assert edge.statuses == []

    edge.send_sample(samples[1])
    edge.pump()
    assert len(edge.statuses) == 1
    assert edge.statuses[0].counts == {CLASSES[0]: 2}
    assert edge.statuses[0].capacity == 2


def _assignment(extractor, class_names, round_index=1) -> bytes:
    header = AssignmentHeader(
        edge_id="edge-1", round=round_index, dim_2d=extractor.dim_2d, dim_3d=extractor.dim_3d,
        classes=[ClassAssignment(class_name=name, model_version=0, iterations=3, learning_rate=1e-3,
                                 batch_pixels=64) for name in class_names],
    )
    tensors = {}
    for name in class_names:
        state = pair_state(init_mapper_pair(extractor.dim_2d, extractor.dim_3d, seed=0, class_name=name))
        tensors.update({f"{name}/{key}": array for key, array in state.items()})
    return encode(header, tensors)


def test_assignment_trains_and_uploads_once(tmp_path, dataset, extractor):
    edge = EdgeHarness(tmp_path / "edge", extractor)
    for sample in _train_samples(dataset, CLASSES[0], 2):
        edge.send_sample(sample)
    edge.pump()

    payload = _assignment(extractor, [CLASSES[0]])
    edge.peer.publish(edge.topics.assignment("edge-1"), payload)
    edge.peer.publish(edge.topics.assignment("edge-1"), payload)  # QoS 1 redelivery
    edge.pump()

    assert len(edge.updates) == 1
    header, tensors = edge.updates[0]
    assert header.class_name == CLASSES[0]
    assert header.num_samples == 2
    assert {name: array.shape for name, array in tensors.items()} == expected_shapes(extractor.dim_2d, extractor.dim_3d)
    assert np.isfinite(header.final_loss)


def test_assignment_for_class_without_samples_is_rejected(tmp_path, dataset, extractor):
    edge = EdgeHarness(tmp_path / "edge", extractor)
    edge.send_sample(_train_samples(dataset, CLASSES[0], 1)[0])
    edge.pump()

    edge.peer.publish(edge.topics.assignment("edge-1"), _assignment(extractor, [CLASSES[1]]))
    edge.pump()

    assert edge.updates == []
    assert edge.node.rejections.counts["assignment"] == 1


def _sensor_settings(dataset: Path, **changes) -> SensorSettings:
    fields = dict(transport="inprocess", data_root=dataset, edges=["edge-1", "edge-2"], classes_per_edge=2,
                  edges_per_class=2, packet_size=3, rounds=2)
    fields.update(changes)
    return SensorSettings(**fields)


def test_sensor_rejects_unknown_class(dataset):
    with pytest.raises(DatasetError) as raised:
        SensorNode(_sensor_settings(dataset, classes=["teapot"]), InProcessTransport(InProcessBus(), "s"))
    assert "teapot" in str(raised.value)
    for known in CLASSES:
        assert known in str(raised.value)


def test_sensor_rejects_missing_data_root(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "absent")):
        SensorNode(_sensor_settings(tmp_path / "absent"), InProcessTransport(InProcessBus(), "s"))


def test_corrupt_files_in_stream_are_skipped(tmp_path, dataset, caplog):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    bus = InProcessBus()
    sensor_transport = InProcessTransport(bus, "sensors")
    node = SensorNode(_sensor_settings(copy), sensor_transport)
    first_packet = node.schedule[0]["edge-1"]
    broken_png = node._refs[first_packet[0][1]].rgb_path
    broken_tiff = node._refs[first_packet[1][1]].xyz_path
    broken_png.write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    broken_tiff.write_bytes(b"II*\x00garbage")

    listener = InProcessTransport(bus, "listener")
    packets: list[PacketHeader] = []
    samples: list[str] = []
    sensor_transport.start()
    listener.start()
    listener.subscribe(Topics().packet("edge-1"), lambda t, p: packets.append(decode(p, PacketHeader, max_payload_bytes=1 << 20)[0]))
    listener.subscribe(Topics().sample("edge-1"), lambda t, p: samples.append(decode(p, SampleHeader, max_payload_bytes=1 << 26)[0].sample_id))
    caplog.set_level(logging.WARNING)

    node.publish_round(1)
    listener.poll(0)

    assert node.skipped_files == 2
    assert len(packets) == 1
    assert packets[0].sample_ids == samples
    assert len(samples) == len(first_packet) - 2
    assert str(broken_png) in caplog.text or broken_png.name in caplog.text


def test_edge_extracts_each_sample_content_once(tmp_path, dataset, extractor):
    edge = EdgeHarness(tmp_path / "edge", extractor)
    sample = _train_samples(dataset, CLASSES[0], 1)[0]
    renamed = type(sample)(sample.sample_id.replace("/good/", "/good/resent-"), sample.class_name, sample.rgb, sample.xyz)

    edge.send_sample(sample)
    edge.send_sample(sample)
    edge.send_sample(renamed)  # same pixels under a new id: buffered again, extracted once
    edge.pump()

    assert edge.node.buffer.counts() == {CLASSES[0]: 2}
    assert edge.node.extractions == 1
    assert edge.node.feature_cache.hits == 1


def test_evaluator_reuses_cached_features_after_restart(tmp_path, dataset, extractor):
    from cloud.evaluation import Evaluator
    from modiad.features.cache import FeatureCache

    first = FeatureCache(tmp_path / "cache", max_bytes=1 << 30)
    Evaluator(dataset, "test", extractor, cache=first).prepare()
    assert first.extractions > 0

    second = FeatureCache(tmp_path / "cache", max_bytes=1 << 30)
    prepared = Evaluator(dataset, "test", extractor, cache=second).prepare()

    assert second.extractions == 0
    assert sum(len(entries) for entries in prepared.samples.values()) == first.extractions


def test_sample_without_object_points_is_rejected(tmp_path, dataset, extractor):
    edge = EdgeHarness(tmp_path / "edge", extractor)
    sample = _train_samples(dataset, CLASSES[0], 1)[0]
    empty = type(sample)(sample.sample_id, sample.class_name, sample.rgb, np.full_like(sample.xyz, np.inf))

    edge.send_sample(empty)
    edge.pump()

    assert edge.node.buffer.counts() == {}
    assert edge.node.rejections.counts["sample"] == 1


def test_sample_of_unlisted_class_is_rejected(tmp_path, dataset, extractor):
    edge = EdgeHarness(tmp_path / "edge", extractor)
    edge.node.settings = edge.settings.model_copy(update={"classes": [CLASSES[1]]})
    sample = _train_samples(dataset, CLASSES[0], 1)[0]

    edge.send_sample(sample)
    edge.pump()

    assert edge.node.buffer.counts() == {}
    assert edge.node.rejections.counts["sample"] == 1
