"""The round coordinator over the in-process bus, with a fake clock and scripted edges."""

import numpy as np
import pytest

from cloud.bank import ModelBank
from cloud.coordinator import Coordinator
from modiad.codec import decode, encode
from modiad.mapper import expected_shapes
from modiad.protocol import (
    AssignmentHeader,
    OnlineHeader,
    RoundHeader,
    StatusHeader,
    Topics,
    UpdateHeader,
)
from modiad.settings import CloudSettings
from modiad.transport.inprocess import InProcessBus, InProcessTransport

DIM_2D, DIM_3D = 6, 4
IDENTITY = "test-features"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fleet:
    """A coordinator plus a scripted client that speaks for the edges."""

    def __init__(self, tmp_path, **cloud_fields) -> None:
        fields = dict(transport="inprocess", state_dir=tmp_path / "cloud", rounds=2, status_deadline_s=30,
                      update_deadline_s=60, join_timeout_s=10)
        fields.update(cloud_fields)
        self.settings = CloudSettings(**fields)
        self.topics = Topics(self.settings.topic_root)
        self.bus = InProcessBus()
        self.clock = FakeClock()
        self.cloud_transport = InProcessTransport(self.bus, "cloud")
        self.bank = ModelBank(dim_2d=DIM_2D, dim_3d=DIM_3D, seed=0, feature_identity=IDENTITY)
        self.coordinator = Coordinator(self.settings, self.cloud_transport, self.bank, clock=self.clock)
        self.edges = InProcessTransport(self.bus, "edges")
        self.assignments: dict[str, AssignmentHeader] = {}
        self.assignment_tensors: dict[str, dict] = {}
        self.rounds: list[RoundHeader] = []
        self.cloud_transport.start()
        self.edges.start()
        self.edges.subscribe(f"{self.settings.topic_root}/edges/+/assignment", self._on_assignment)
        self.edges.subscribe(self.topics.round_current, self._on_round)

    def _on_assignment(self, topic, payload):
        header, tensors = decode(payload, AssignmentHeader, max_payload_bytes=1 << 26)
        self.assignments[header.edge_id] = header
        self.assignment_tensors[header.edge_id] = tensors

    def _on_round(self, topic, payload):
        self.rounds.append(decode(payload, RoundHeader, max_payload_bytes=1 << 20)[0])

    def pump(self) -> None:
        for _ in range(5):
            self.cloud_transport.poll(0)
            self.coordinator.tick()
            self.edges.poll(0)

    def online(self, edge_id: str, state: str = "online") -> None:
        self.edges.publish(self.topics.online(edge_id), encode(OnlineHeader(edge_id=edge_id, state=state)), retain=True)

    def status(self, edge_id: str, round_index: int, counts: dict, capacity: int = 2) -> None:
        header = StatusHeader(edge_id=edge_id, round=round_index, counts=counts, capacity=capacity,
                              feature_identity=IDENTITY)
        self.edges.publish(self.topics.status(edge_id), encode(header))

    def update_payload(self, edge_id: str, class_name: str, round_index: int, fill: float) -> bytes:
        header = UpdateHeader(edge_id=edge_id, round=round_index, class_name=class_name, base_version=0,
                              num_samples=3, num_pixels=30, final_loss=0.5)
        tensors = {name: np.full(shape, fill, np.float32) for name, shape in expected_shapes(DIM_2D, DIM_3D).items()}
        return encode(header, tensors)

    def update(self, edge_id: str, class_name: str, round_index: int, fill: float) -> bytes:
        payload = self.update_payload(edge_id, class_name, round_index, fill)
        self.edges.publish(self.topics.update(edge_id, class_name), payload)
        return payload


def _started_fleet(tmp_path, **fields) -> Fleet:
    fleet = Fleet(tmp_path, **fields)
    fleet.coordinator.start()
    return fleet


def test_round_waits_for_expected_edges(tmp_path):
    fleet = _started_fleet(tmp_path, expected_edges=["edge-1", "edge-2"])
    fleet.online("edge-1")
    fleet.pump()
    assert fleet.coordinator.phase == "joining"

    fleet.online("edge-2")
    fleet.pump()
    assert fleet.coordinator.phase == "status"
    assert fleet.rounds[-1].round == 1
    assert fleet.rounds[-1].phase == "status"


def test_full_round_averages_updates_per_class(tmp_path):
    fleet = _started_fleet(tmp_path, expected_edges=["edge-1", "edge-2"])
    fleet.online("edge-1")
    fleet.online("edge-2")
    fleet.pump()
    fleet.status("edge-1", 1, {"disc": 5, "ring": 3})
    fleet.status("edge-2", 1, {"disc": 4})
    fleet.pump()

    assert fleet.coordinator.phase == "updates"
    selection = fleet.coordinator.round.selection
    assert set(selection) == {("edge-1", "disc"), ("edge-1", "ring"), ("edge-2", "disc")}
    assert [a.class_name for a in fleet.assignments["edge-2"].classes] == ["disc"]
    assert "disc/to_3d.layers.0.weight" in fleet.assignment_tensors["edge-2"]

    fleet.update("edge-1", "disc", 1, 1.0)
    fleet.update("edge-2", "disc", 1, 3.0)
    fleet.update("edge-1", "ring", 1, 5.0)
    fleet.pump()

    disc = fleet.bank.classes["disc"]
    assert np.all(disc.state["to_2d.layers.4.bias"] == 2.0)
    assert disc.updates == 2
    assert disc.version == 1
    assert fleet.bank.classes["ring"].updates == 1
    assert fleet.bank.completed_round == 1
    assert (tmp_path / "cloud" / "bank" / "bank.safetensors").exists()
    assert fleet.rounds[-1].round == 2


def test_duplicate_update_is_applied_once(tmp_path):
    fleet = _started_fleet(tmp_path, expected_edges=["edge-1"], rounds=1)
    fleet.online("edge-1")
    fleet.pump()
    fleet.status("edge-1", 1, {"disc": 5})
    fleet.pump()

    payload = fleet.update_payload("edge-1", "disc", 1, 1.0)
    second = fleet.update_payload("edge-1", "disc", 1, 9.0)  # a new message id for the same (edge, class)
    fleet.edges.publish(fleet.topics.update("edge-1", "disc"), payload)
    fleet.edges.publish(fleet.topics.update("edge-1", "disc"), payload)
    fleet.edges.publish(fleet.topics.update("edge-1", "disc"), second)
    fleet.pump()

    disc = fleet.bank.classes["disc"]
    assert disc.updates == 1
    assert np.all(disc.state["to_3d.layers.0.bias"] == 1.0)
    assert fleet.coordinator.finished


def test_silent_edge_is_not_scheduled_after_status_deadline(tmp_path):
    fleet = _started_fleet(tmp_path, expected_edges=["edge-1", "edge-2"])
    fleet.online("edge-1")
    fleet.online("edge-2")
    fleet.pump()
    fleet.status("edge-1", 1, {"disc": 5})
    fleet.pump()
    assert fleet.coordinator.phase == "status"

    fleet.clock.now += 31
    fleet.pump()

    assert fleet.coordinator.phase == "updates"
    assert {edge for edge, _ in fleet.coordinator.round.selection} == {"edge-1"}
    assert "edge-2" not in fleet.assignments


def test_offline_edge_is_not_scheduled(tmp_path):
    fleet = _started_fleet(tmp_path, expected_edges=["edge-1", "edge-2"])
    fleet.online("edge-1")
    fleet.online("edge-2")
    fleet.pump()
    fleet.status("edge-1", 1, {"disc": 5})
    fleet.status("edge-2", 1, {"ring": 5})
    fleet.online("edge-2", "offline")
    fleet.pump()

    assert fleet.coordinator.round.selection == [("edge-1", "disc")]
    assert "edge-2" not in fleet.assignments


def test_missing_update_keeps_model_after_deadline(tmp_path):
    fleet = _started_fleet(tmp_path, expected_edges=["edge-1"], rounds=1)
    fleet.online("edge-1")
    fleet.pump()
    fleet.status("edge-1", 1, {"disc": 5})
    fleet.pump()
    before = {name: array.copy() for name, array in fleet.bank.classes["disc"].state.items()}

    fleet.clock.now += 61
    fleet.pump()

    assert fleet.coordinator.finished
    assert fleet.bank.classes["disc"].updates == 0
    for name, array in before.items():
        assert np.array_equal(fleet.bank.classes["disc"].state[name], array)


def test_round_with_nothing_feasible_completes(tmp_path):
    fleet = _started_fleet(tmp_path, expected_edges=["edge-1"], rounds=1)
    fleet.online("edge-1")
    fleet.pump()
    fleet.status("edge-1", 1, {})
    fleet.pump()

    assert fleet.coordinator.finished
    assert fleet.assignments["edge-1"].classes == []


def test_late_edge_receives_current_global_model(tmp_path):
    fleet = _started_fleet(tmp_path, expected_edges=["edge-1"], rounds=2)
    fleet.online("edge-1")
    fleet.pump()
    fleet.status("edge-1", 1, {"disc": 5})
    fleet.pump()
    fleet.update("edge-1", "disc", 1, 7.0)
    fleet.pump()
    assert fleet.rounds[-1].round == 2

    fleet.online("edge-9")
    fleet.status("edge-9", 2, {"disc": 50}, capacity=1)
    fleet.status("edge-1", 2, {})
    fleet.pump()

    assert [a.class_name for a in fleet.assignments["edge-9"].classes] == ["disc"]
    assert fleet.assignments["edge-9"].classes[0].model_version == 1
    assert np.all(fleet.assignment_tensors["edge-9"]["disc/to_3d.layers.0.bias"] == 7.0)


@pytest.mark.parametrize(
    "topic_kind", ["online", "status", "update"],
)
def test_malformed_messages_are_counted_and_ignored(tmp_path, topic_kind):
    fleet = _started_fleet(tmp_path, expected_edges=["edge-1"], rounds=1)
    topic = {
        "online": fleet.topics.online("edge-1"),
        "status": fleet.topics.status("edge-1"),
        "update": fleet.topics.update("edge-1", "disc"),
    }[topic_kind]
    fleet.edges.publish(topic, b"\x00\x00\x00\x05{oops")
    fleet.online("edge-1")
    fleet.pump()
    fleet.status("edge-1", 1, {"disc": 5})
    fleet.pump()
    fleet.update("edge-1", "disc", 1, 1.0)
    fleet.pump()

    assert fleet.coordinator.rejections.total == 1
    assert fleet.coordinator.finished


def test_status_with_other_feature_identity_is_rejected(tmp_path):
    fleet = _started_fleet(tmp_path, expected_edges=["edge-1"], rounds=1)
    fleet.online("edge-1")
    fleet.pump()
    header = StatusHeader(edge_id="edge-1", round=1, counts={"disc": 2}, capacity=2, feature_identity="other")
    fleet.edges.publish(fleet.topics.status("edge-1"), encode(header))
    fleet.pump()

    assert fleet.coordinator.rejections.counts["status"] == 1
    assert fleet.coordinator.round.statuses == {}


def test_restarted_cloud_resumes_after_last_completed_round(tmp_path):
    fleet = _started_fleet(tmp_path, expected_edges=["edge-1"], rounds=3)
    fleet.online("edge-1")
    fleet.pump()
    fleet.status("edge-1", 1, {"disc": 5})
    fleet.pump()
    fleet.update("edge-1", "disc", 1, 2.0)
    fleet.pump()

    restored = ModelBank.load(tmp_path / "cloud" / "bank")
    second = Coordinator(fleet.settings, InProcessTransport(fleet.bus, "cloud-2"), restored, clock=fleet.clock)
    second.transport.start()
    second.start()
    for _ in range(3):
        second.transport.poll(0)
        second.tick()

    assert second.round.index == 2
    assert restored.classes["disc"].updates == 1


def test_new_class_mid_run_starts_at_zero(tmp_path):
    fleet = _started_fleet(tmp_path, expected_edges=["edge-1"], rounds=2)
    fleet.online("edge-1")
    fleet.pump()
    fleet.status("edge-1", 1, {"disc": 5})
    fleet.pump()
    fleet.update("edge-1", "disc", 1, 1.0)
    fleet.pump()
    assert "ring" not in fleet.bank.classes

    fleet.status("edge-1", 2, {"disc": 5, "ring": 1})
    fleet.pump()

    assert fleet.bank.classes["ring"].updates == 0
    assert fleet.bank.classes["ring"].version == 0
    assert fleet.bank.cumulative_updates() == {"disc": 1, "ring": 0}


def test_round_log_records_optimality_gap(tmp_path):
    from cloud.reports import RoundReporter

    fleet = Fleet(tmp_path, expected_edges=["edge-1", "edge-2"], rounds=1)
    fleet.coordinator.reporter = RoundReporter(tmp_path / "results")
    fleet.coordinator.start()
    fleet.online("edge-1")
    fleet.online("edge-2")
    fleet.pump()
    fleet.status("edge-1", 1, {"disc": 5, "ring": 3})
    fleet.status("edge-2", 1, {"disc": 4})
    fleet.pump()
    for edge_id, class_name in fleet.coordinator.round.selection:
        fleet.update(edge_id, class_name, 1, 1.0)
    fleet.pump()

    import json

    summary = json.loads((tmp_path / "results" / "rounds.jsonl").read_text().splitlines()[0])
    assert summary["optimality_gap"] is not None
    assert 0.0 <= summary["optimality_gap"] <= 1.0


def test_failed_assignment_publish_does_not_stop_the_round(tmp_path):
    from modiad.errors import TransportError

    fleet = _started_fleet(tmp_path, expected_edges=["edge-1", "edge-2"], rounds=1)
    fleet.online("edge-1")
    fleet.online("edge-2")
    fleet.pump()
    publish = fleet.cloud_transport.publish

    def fail_edge_2(topic, payload, *, retain=False):
        if topic == fleet.topics.assignment("edge-2"):
            raise TransportError("payload too large for the test")
        publish(topic, payload, retain=retain)

    fleet.cloud_transport.publish = fail_edge_2
    fleet.status("edge-1", 1, {"disc": 5})
    fleet.status("edge-2", 1, {"ring": 5})
    fleet.pump()
    fleet.update("edge-1", "disc", 1, 1.0)
    fleet.pump()

    assert fleet.coordinator.finished
    assert fleet.bank.classes["disc"].updates == 1
    assert fleet.bank.classes["ring"].updates == 0
