"""End to end over a real Mosquitto: sensors, 2 edges and the cloud as separate processes.

One fleet run (2 classes, 2 edges, 2 rounds) is shared by the tests of this module.
A chaos client injects a malformed payload on every inbound topic and re-publishes
every update twice (same message id, then a fresh one) while the run goes on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from cloud.bank import ModelBank
from modiad.codec import decode, encode
from modiad.experiment import run_inprocess
from modiad.protocol import RoundHeader, Topics, UpdateHeader
from modiad.settings import CloudSettings, EdgeSettings, SensorSettings, load_settings
from modiad.transport.mqtt import MqttSettings, MqttTransport
from sensors_sim.synthetic import CLASS_NAMES, generate_dataset

pytestmark = [pytest.mark.slow, pytest.mark.mqtt]

EDGES = ["edge-1", "edge-2"]
RUN_TIMEOUT_S = 600


@dataclass
class FleetRun:
    root: Path
    configs: dict[str, Path]
    return_codes: dict[str, int]
    logs: dict[str, str]
    rounds: list[dict]
    injected_duplicates: int


def _write_configs(root: Path, data_root: Path, broker_url: str, topic_root: str) -> dict[str, Path]:
    common = {"mqtt": {"url": broker_url, "connect_timeout_s": 10}, "topic_root": topic_root, "seed": 3}
    documents = {
        "cloud": {**common, "state_dir": str(root / "state" / "cloud"), "rounds": 2, "expected_edges": EDGES,
                  "data_root": str(data_root), "results_dir": str(root / "results"),
                  "status_deadline_s": 240, "update_deadline_s": 240,
                  "training": {"iterations": 15, "batch_pixels": 512}},
        "sensors": {**common, "state_dir": str(root / "state" / "sensors"), "data_root": str(data_root),
                    "edges": EDGES, "classes_per_edge": 2, "edges_per_class": 2, "packet_size": 3, "rounds": 2},
    }
    for edge_id in EDGES:
        documents[edge_id] = {**common, "state_dir": str(root / "state" / edge_id), "edge_id": edge_id, "capacity": 2}
    paths = {}
    for name, document in documents.items():
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(document), encoding="utf-8")
    return paths


class ChaosClient:
    """Injects malformed payloads once round 1 opens and replays every update twice."""

    def __init__(self, settings: MqttSettings, topics: Topics, class_name: str) -> None:
        self.transport = MqttTransport(settings, client_id=f"chaos-{uuid.uuid4().hex[:8]}")
        self.topics = topics
        self.class_name = class_name
        self.injected = False
        self.replayed = 0
        self._seen: set[str] = set()
        self.stop_event = threading.Event()

    def run(self) -> None:
        self.transport.start()
        self.transport.subscribe(self.topics.round_current, self._on_round)
        self.transport.subscribe(self.topics.all_updates, self._on_update)
        while not self.stop_event.is_set():
            self.transport.poll(0.1)
        self.transport.stop()

    def _on_round(self, topic: str, payload: bytes) -> None:
        try:
            header, _ = decode(payload, RoundHeader, max_payload_bytes=1 << 20)
        except Exception:
            return  # our own malformed round message comes back here
        if header.phase == "status" and header.round == 1 and not self.injected:
            self.injected = True
            garbage = b"\x00\x00\x00\x07{broken"
            for topic_name in (
                self.topics.sample("edge-1"),
                self.topics.packet("edge-1"),
                self.topics.assignment("edge-1"),
                self.topics.round_current,
                self.topics.status("edge-1"),
                self.topics.update("edge-1", self.class_name),
                self.topics.online("edge-2"),
            ):
                self.transport.publish(topic_name, garbage)

    def _on_update(self, topic: str, payload: bytes) -> None:
        header, tensors = decode(payload, UpdateHeader, max_payload_bytes=1 << 28)
        if header.message_id in self._seen:
            return
        self._seen.add(header.message_id)
        self.transport.publish(topic, payload)
        fresh = header.model_copy(update={"message_id": uuid.uuid4().hex})
        self._seen.add(fresh.message_id)
        self.transport.publish(topic, encode(fresh, tensors))
        self.replayed += 2


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate_dataset(root, profile="small", seed=0, classes=list(CLASS_NAMES[:2]))
    return root


@pytest.fixture(scope="module")
def fleet_run(tmp_path_factory, mosquitto, small_dataset) -> FleetRun:
    root = tmp_path_factory.mktemp("fleet")
    topic_root = f"test/{uuid.uuid4().hex}/modiad/v1"
    configs = _write_configs(root, small_dataset, mosquitto.url, topic_root)
    chaos = ChaosClient(MqttSettings(url=mosquitto.url), Topics(topic_root), CLASS_NAMES[0])
    chaos_thread = threading.Thread(target=chaos.run, daemon=True)
    chaos_thread.start()

    processes = {}
    log_paths = {}
    for name in ["sensors", *EDGES, "cloud"]:
        service = "edge" if name.startswith("edge") else name
        command = [sys.executable, "-m", "modiad.cli", service, "--config", str(configs[name])]
        if service == "edge":
            command.append("--exit-when-finished")
        log_paths[name] = root / f"{name}.log"
        processes[name] = subprocess.Popen(command, stdout=log_paths[name].open("wb"), stderr=subprocess.STDOUT)

    return_codes = {}
    try:
        for name, process in processes.items():
            return_codes[name] = process.wait(timeout=RUN_TIMEOUT_S)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
        chaos.stop_event.set()
        chaos_thread.join(timeout=10)

    logs = {name: path.read_text(encoding="utf-8", errors="replace") for name, path in log_paths.items()}
    rounds_path = root / "results" / "rounds.jsonl"
    rounds = [json.loads(line) for line in rounds_path.read_text().splitlines()] if rounds_path.exists() else []
    return FleetRun(root, configs, return_codes, logs, rounds, chaos.replayed)


def test_every_service_exits_cleanly(fleet_run):
    for name, code in fleet_run.return_codes.items():
        assert code == 0, f"{name} exited with {code}:\n{fleet_run.logs[name][-3000:]}"


def test_bank_is_updated_each_round(fleet_run):
    bank = ModelBank.load(fleet_run.root / "state" / "cloud" / "bank")
    assert bank is not None
    assert bank.completed_round == 2
    assert [summary["round"] for summary in fleet_run.rounds] == [1, 2]
    received = sum(len(s["selection"]) - len(s["missing_updates"]) for s in fleet_run.rounds)
    assert received > 0
    assert sum(bank.cumulative_updates().values()) == received
    assert max(model.version for model in bank.classes.values()) >= 1


def test_replayed_updates_are_applied_once(fleet_run):
    assert fleet_run.injected_duplicates > 0
    for summary in fleet_run.rounds:
        assert summary["missing_updates"] == []
    bank = ModelBank.load(fleet_run.root / "state" / "cloud" / "bank")
    selected = sum(len(summary["selection"]) for summary in fleet_run.rounds)
    assert sum(bank.cumulative_updates().values()) == selected
    ignored = sum(summary["duplicates_ignored"] + summary["rejected_messages"] for summary in fleet_run.rounds)
    assert ignored >= fleet_run.injected_duplicates // 2


@pytest.mark.parametrize(
    ("service", "kind"),
    [
        ("edge-1", "SampleHeader"),
        ("edge-1", "PacketHeader"),
        ("edge-1", "AssignmentHeader"),
        ("edge-1", "RoundHeader"),
        ("cloud", "StatusHeader"),
        ("cloud", "UpdateHeader"),
        ("cloud", "OnlineHeader"),
        ("sensors", "rejected round"),
    ],
)
def test_malformed_payload_is_rejected_and_logged(fleet_run, service, kind):
    log = fleet_run.logs[service]
    needle = kind if kind.startswith("rejected") else f"rejected {kind}"
    assert needle in log
    assert fleet_run.return_codes[service] == 0


def test_results_files_exist(fleet_run):
    results = json.loads((fleet_run.root / "results" / "results.json").read_text())
    assert set(results["classes"]) == set(CLASS_NAMES[:2])
    assert "i_auroc" in results["mean"]
    assert (fleet_run.root / "results" / "results.csv").exists()


def test_inprocess_run_builds_identical_bank(fleet_run, tmp_path):
    configs = fleet_run.configs
    state = tmp_path / "state"
    cloud = load_settings(CloudSettings, configs["cloud"], transport="inprocess", state_dir=state / "cloud")
    edges = [load_settings(EdgeSettings, configs[edge_id], transport="inprocess", state_dir=state / edge_id)
             for edge_id in EDGES]
    sensors = load_settings(SensorSettings, configs["sensors"], transport="inprocess")

    run_inprocess(cloud, edges, sensors, results_dir=tmp_path / "results")

    over_mqtt = ModelBank.load(fleet_run.root / "state" / "cloud" / "bank")
    in_process = ModelBank.load(state / "cloud" / "bank")
    assert in_process.cumulative_updates() == over_mqtt.cumulative_updates()
    for class_name, model in over_mqtt.classes.items():
        for name, array in model.state.items():
            assert np.array_equal(in_process.classes[class_name].state[name], array), f"{class_name}/{name}"
