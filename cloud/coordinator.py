"""The round coordinator: a transport-agnostic state machine.

A round has five steps. The coordinator opens it and collects status reports until
every live edge has reported or the deadline passes. It schedules class updates and
sends each reporting edge its assignment with the global weights. It collects
updates until every assigned one has arrived or the deadline passes. Then it
averages each class over the edges that uploaded it, saves the bank atomically,
evaluates, and opens the next round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cloud.aggregation import aggregate_class
from cloud.bank import ModelBank
from cloud.evaluation import Evaluator
from cloud.exact import optimality_gap
from cloud.reports import RoundReporter
from cloud.scheduling import SCHEDULERS
from modiad.codec import TensorSpec, check_tensors, encode
from modiad.errors import ProtocolError, TransportError
from modiad.inbound import InboundDecoder
from modiad.mapper import expected_shapes
from modiad.protocol import (
    AssignmentHeader,
    ClassAssignment,
    OnlineHeader,
    RoundHeader,
    StatusHeader,
    Topics,
    UpdateHeader,
)
from modiad.rejections import RejectionLog
from modiad.settings import CloudSettings
from modiad.transport.base import Transport

__all__ = ["Coordinator"]

logger = logging.getLogger(__name__)

GAP_MAX_FEASIBLE_SETS = 2**17
"""Largest instance (feasible selections) whose exact optimum is computed for the gap.

The 5-edge, 10-class stream with Γ_k^cop = 2 stays below it. Larger fleets skip
the gap, because the exact search time grows with the number of selections.
"""


@dataclass
class _RoundState:
    index: int
    opened_at: float
    statuses: dict[str, StatusHeader] = field(default_factory=dict)
    selection: list[tuple[str, str]] = field(default_factory=list)
    assigned: set[tuple[str, str]] = field(default_factory=set)
    updates: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    update_bytes: int = 0
    assignment_bytes: int = 0
    train_started_at: float = 0.0
    duplicates: int = 0
    rejected_at_open: int = 0
    optimality_gap: float | None = None
    failed_assignments: list[str] = field(default_factory=list)


class Coordinator:
    """The cloud's round loop; `start`, then call `tick` after every `transport.poll`."""

    def __init__(
        self,
        settings: CloudSettings,
        transport: Transport,
        bank: ModelBank,
        *,
        evaluator: Evaluator | None = None,
        reporter: RoundReporter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.bank = bank
        self.evaluator = evaluator
        self.reporter = reporter
        self.clock = clock
        self.topics = Topics(settings.topic_root)
        self.rejections = RejectionLog(logger)
        self.bank_dir = Path(settings.state_dir) / "bank"

        self.online: dict[str, bool] = {}
        self.phase = "joining"
        self.round: _RoundState | None = None
        self.last_metrics: dict[str, float] = {}
        self._started_at = 0.0
        self._inbound = InboundDecoder(self.rejections, settings.max_payload_bytes)

    @property
    def finished(self) -> bool:
        return self.phase == "finished"

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to edge traffic and prepare the bank's classes."""
        self.transport.subscribe(self.topics.all_online, self._on_online)
        self.transport.subscribe(self.topics.all_status, self._on_status)
        self.transport.subscribe(self.topics.all_updates, self._on_update)
        if self.evaluator is not None:
            for class_name in self.evaluator.classes():
                self.bank.ensure_class(class_name)
        self._started_at = self.clock()
        logger.info(
            "cloud started: policy %s, Γ_com %d, %d rounds, bank of %d classes, last completed round %d",
            self.settings.scheduling.policy,
            self.settings.scheduling.comm_budget,
            self.settings.rounds,
            len(self.bank.classes),
            self.bank.completed_round,
        )
        if self.bank.completed_round >= self.settings.rounds:
            self._finish()

    def stop(self) -> None:
        """Log the stop; the bank is already saved after every completed round."""
        logger.info(
            "cloud stopped in phase %s after round %d; rejected inputs: %s",
            self.phase,
            self.bank.completed_round,
            dict(self.rejections.counts),
        )

    def tick(self) -> None:
        """Advance the state machine when its phase is complete or its deadline has passed."""
        now = self.clock()
        if self.phase == "joining" and self._fleet_ready(now):
            self._open_round(self.bank.completed_round + 1)
        elif self.phase == "status" and self._status_complete(now):
            self._schedule_and_assign()
        elif self.phase == "updates" and self._updates_complete(now):
            self._complete_round()

    # -- inbound handlers ----------------------------------------------------------

    def _decode(self, topic: str, payload: bytes, header_model: type) -> tuple | None:
        duplicates_before = self._inbound.duplicates
        decoded = self._inbound.decode(topic, payload, header_model)
        if self.round is not None:
            self.round.duplicates += self._inbound.duplicates - duplicates_before
        return decoded

    def _on_online(self, topic: str, payload: bytes) -> None:
        decoded = self._decode(topic, payload, OnlineHeader)
        if decoded is None:
            return
        header, _ = decoded
        if topic != self.topics.online(header.edge_id):
            self.rejections.reject("online", topic, f"edge id {header.edge_id!r} does not match the topic")
            return
        was_online = self.online.get(header.edge_id, False)
        self.online[header.edge_id] = header.state == "online"
        if was_online != self.online[header.edge_id]:
            logger.info("edge %s is %s", header.edge_id, header.state)

    def _on_status(self, topic: str, payload: bytes) -> None:
        decoded = self._decode(topic, payload, StatusHeader)
        if decoded is None:
            return
        header, _ = decoded
        try:
            if topic != self.topics.status(header.edge_id):
                raise ProtocolError(f"edge id {header.edge_id!r} does not match the topic")
            if header.feature_identity != self.bank.feature_identity:
                raise ProtocolError(
                    f"edge {header.edge_id} extracts {header.feature_identity!r} features but the bank uses "
                    f"{self.bank.feature_identity!r}; configure the same feature preset everywhere"
                )
        except ProtocolError as error:
            self.rejections.reject("status", topic, str(error))
            return
        if self.round is None or self.phase != "status" or header.round != self.round.index:
            logger.info("status of edge %s for round %d arrived outside its collection window; ignored", header.edge_id, header.round)
            return
        if header.edge_id in self.round.statuses:
            self.round.duplicates += 1
            return
        self.online.setdefault(header.edge_id, True)
        self.round.statuses[header.edge_id] = header

    def _on_update(self, topic: str, payload: bytes) -> None:
        decoded = self._decode(topic, payload, UpdateHeader)
        if decoded is None:
            return
        header, tensors = decoded
        key = (header.edge_id, header.class_name)
        try:
            if topic != self.topics.update(header.edge_id, header.class_name):
                raise ProtocolError(f"edge {header.edge_id!r} and class {header.class_name!r} do not match the topic")
            if self.round is None or header.round != self.round.index or self.phase != "updates":
                raise ProtocolError(f"update is for round {header.round}, which is not collecting updates")
            if key not in self.round.assigned:
                raise ProtocolError(f"edge {header.edge_id} was not assigned class {header.class_name} in round {header.round}")
            specs = {
                name: TensorSpec("float32", shape)
                for name, shape in expected_shapes(self.bank.dim_2d, self.bank.dim_3d).items()
            }
            check_tensors(tensors, specs)
        except ProtocolError as error:
            self.rejections.reject("update", topic, str(error))
            return
        if key in self.round.updates:
            self.round.duplicates += 1
            logger.info("update of class %s from edge %s already applied; duplicate ignored", header.class_name, header.edge_id)
            return
        self.round.updates[key] = tensors
        self.round.update_bytes += len(payload)

    # -- steps -------------------------------------------------------------------

    def _fleet_ready(self, now: float) -> bool:
        live = {edge_id for edge_id, is_online in self.online.items() if is_online}
        expected = set(self.settings.expected_edges)
        if expected:
            if expected <= live:
                return True
            if now - self._started_at >= self.settings.join_timeout_s and live:
                logger.warning("join timeout: starting without %s", sorted(expected - live))
                return True
            return False
        return bool(live)

    def _open_round(self, index: int) -> None:
        self.round = _RoundState(index=index, opened_at=self.clock(), rejected_at_open=self.rejections.total)
        self.phase = "status"
        deadline = time.time() + self.settings.status_deadline_s
        self._publish_round("status", deadline)
        logger.info("round %d/%d opened; waiting for status from %s", index, self.settings.rounds, self._live_edges())

    def _live_edges(self) -> list[str]:
        return sorted(edge_id for edge_id, is_online in self.online.items() if is_online)

    def _status_complete(self, now: float) -> bool:
        assert self.round is not None
        waiting = [edge_id for edge_id in self._live_edges() if edge_id not in self.round.statuses]
        if not waiting and self.round.statuses:
            return True
        if now - self.round.opened_at >= self.settings.status_deadline_s:
            logger.warning("round %d: status deadline passed; missing %s", self.round.index, waiting)
            return True
        return False

    def schedule(self, statuses: dict[str, StatusHeader]) -> list[tuple[str, str]]:
        """Choose the (edge, class) pairs to update from the live edges' reports.

        Also records how far the choice is from the best selection under the same
        objective, when the instance is small enough for an exact search.
        """
        counts = {edge_id: dict(status.counts) for edge_id, status in sorted(statuses.items())}
        capacity = {edge_id: status.capacity for edge_id, status in sorted(statuses.items())}
        for edge_counts in counts.values():
            for class_name in edge_counts:
                self.bank.ensure_class(class_name)
        scheduling = self.settings.scheduling
        weights = {"alpha": scheduling.alpha, "beta": scheduling.beta, "epsilon": scheduling.epsilon}
        cumulative = self.bank.cumulative_updates()
        assert self.round is not None

        policy = SCHEDULERS[scheduling.policy]
        selection = policy(
            counts,
            cumulative,
            capacity,
            scheduling.comm_budget,
            seed=self.settings.seed * 1_000_003 + self.round.index,
            **weights,
        )
        try:
            self.round.optimality_gap = optimality_gap(
                selection, counts, cumulative, capacity, scheduling.comm_budget,
                max_sets=GAP_MAX_FEASIBLE_SETS, **weights,
            )
        except ValueError as error:
            logger.debug("round %d: optimality gap not computed: %s", self.round.index, error)
        return selection

    def _schedule_and_assign(self) -> None:
        assert self.round is not None
        live_statuses = {
            edge_id: status for edge_id, status in self.round.statuses.items() if self.online.get(edge_id, False)
        }
        self.round.selection = self.schedule(live_statuses)
        self.round.assigned = set(self.round.selection)

        training = self.settings.training
        for edge_id in sorted(live_statuses):
            classes = [class_name for selected_edge, class_name in self.round.selection if selected_edge == edge_id]
            assignments = [
                ClassAssignment(
                    class_name=class_name,
                    model_version=self.bank.classes[class_name].version,
                    iterations=training.iterations,
                    learning_rate=training.learning_rate,
                    batch_pixels=training.batch_pixels,
                )
                for class_name in classes
            ]
            tensors = {
                f"{class_name}/{name}": array
                for class_name in classes
                for name, array in self.bank.classes[class_name].state.items()
            }
            header = AssignmentHeader(
                edge_id=edge_id,
                round=self.round.index,
                dim_2d=self.bank.dim_2d,
                dim_3d=self.bank.dim_3d,
                classes=assignments,
            )
            payload = encode(header, tensors)
            try:
                self.transport.publish(self.topics.assignment(edge_id), payload)
            except TransportError as error:
                # The edge gets nothing this round; its classes count as missing updates.
                logger.error("round %d: assignment to edge %s not sent: %s", self.round.index, edge_id, error)
                self.round.assigned -= {(edge_id, class_name) for class_name in classes}
                self.round.failed_assignments.append(edge_id)
                continue
            self.round.assignment_bytes += len(payload)

        self.phase = "updates"
        self.round.train_started_at = self.clock()
        self._publish_round("train", time.time() + self.settings.update_deadline_s)
        logger.info(
            "round %d: %d edges reported, %s scheduled %s",
            self.round.index,
            len(self.round.statuses),
            self.settings.scheduling.policy,
            self.round.selection,
        )

    def _updates_complete(self, now: float) -> bool:
        assert self.round is not None
        if self.round.assigned <= set(self.round.updates):
            return True
        if now - self.round.train_started_at >= self.settings.update_deadline_s:
            missing = sorted(self.round.assigned - set(self.round.updates))
            logger.warning("round %d: update deadline passed; missing %s", self.round.index, missing)
            return True
        return False

    def aggregate(self) -> list[str]:
        """Average each class over the edges that uploaded it; return the classes updated."""
        assert self.round is not None
        by_class: dict[str, list[tuple[str, dict[str, np.ndarray]]]] = {}
        for (edge_id, class_name), state in self.round.updates.items():
            by_class.setdefault(class_name, []).append((edge_id, state))
        for class_name, uploads in sorted(by_class.items()):
            uploads.sort(key=lambda upload: upload[0])
            model = self.bank.classes[class_name]
            model.state = aggregate_class([state for _, state in uploads])
            model.version += 1
            model.updates += len(uploads)
        return sorted(by_class)

    def _complete_round(self) -> None:
        assert self.round is not None
        updated = self.aggregate()
        self.bank.completed_round = self.round.index
        self.bank.save(self.bank_dir)

        per_class: dict[str, dict[str, float]] = {}
        mean: dict[str, float] = {}
        is_last = self.round.index >= self.settings.rounds
        if self.evaluator is not None and (is_last or self.round.index % self.settings.eval_every == 0):
            per_class, mean = self.evaluator.evaluate(self.bank)
            self.last_metrics = mean

        missing = sorted(set(self.round.selection) - set(self.round.updates))
        summary = {
            "round": self.round.index,
            "policy": self.settings.scheduling.policy,
            "reported_edges": sorted(self.round.statuses),
            "selection": [list(pair) for pair in self.round.selection],
            "updated_classes": updated,
            "missing_updates": [list(pair) for pair in missing],
            "failed_assignments": self.round.failed_assignments,
            "optimality_gap": self.round.optimality_gap,
            "duplicates_ignored": self.round.duplicates,
            "rejected_messages": self.rejections.total - self.round.rejected_at_open,
            "cumulative_updates": self.bank.cumulative_updates(),
            "assignment_bytes": self.round.assignment_bytes,
            "update_bytes": self.round.update_bytes,
            "seconds": round(self.clock() - self.round.opened_at, 3),
            "metrics_mean": mean,
            "metrics": per_class,
        }
        if self.reporter is not None:
            self.reporter.record_round(summary)
        logger.info(
            "round %d done: %d/%d updates received (%d missing, %d duplicates ignored, %d rejected), mean I-AUROC %s",
            self.round.index,
            len(self.round.updates),
            len(self.round.assigned),
            len(missing),
            self.round.duplicates,
            summary["rejected_messages"],
            f"{mean['i_auroc']:.3f}" if "i_auroc" in mean else "n/a",
        )
        self._publish_round("done", None)

        if is_last:
            if self.reporter is not None:
                self.reporter.write_results(per_class, mean)
            self._finish()
        else:
            self._open_round(self.round.index + 1)

    def _finish(self) -> None:
        self.phase = "finished"
        self._publish_round("finished", None)
        logger.info("cloud finished after round %d", self.bank.completed_round)

    def _publish_round(self, phase: str, deadline: float | None) -> None:
        index = self.round.index if self.round is not None else self.bank.completed_round
        header = RoundHeader(round=index, phase=phase, total_rounds=self.settings.rounds, deadline_unix_s=deadline)
        self.transport.publish(self.topics.round_current, encode(header), retain=True)
