"""The cloud service: builds the coordinator from settings and runs it over MQTT."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import torch

from cloud.bank import ModelBank
from cloud.coordinator import Coordinator
from cloud.evaluation import Evaluator
from cloud.reports import RoundReporter
from modiad.errors import ConfigError
from modiad.features.cache import FeatureCache
from modiad.features.presets import service_extractor
from modiad.protocol import Topics
from modiad.runner import install_stop_signals, run_nodes
from modiad.settings import CloudSettings
from modiad.transport.base import Transport
from modiad.transport.mqtt import MqttTransport

__all__ = ["build_coordinator", "open_bank", "run_cloud"]

logger = logging.getLogger(__name__)


def open_bank(settings: CloudSettings, dim_2d: int, dim_3d: int, feature_identity: str) -> ModelBank:
    """Load the saved bank from the state folder, or start a new one; refuse a mismatching bank."""
    bank_dir = Path(settings.state_dir) / "bank"
    bank = ModelBank.load(bank_dir)
    if bank is None:
        return ModelBank(dim_2d=dim_2d, dim_3d=dim_3d, seed=settings.seed, feature_identity=feature_identity)
    if (bank.dim_2d, bank.dim_3d, bank.feature_identity) != (dim_2d, dim_3d, feature_identity):
        raise ConfigError(
            f"the bank in {bank_dir} was built for features {bank.feature_identity!r} ({bank.dim_2d}/{bank.dim_3d}) "
            f"but the configured preset is {feature_identity!r} ({dim_2d}/{dim_3d}); "
            "use the original feature settings or another state_dir"
        )
    logger.info("resuming from the bank saved after round %d", bank.completed_round)
    return bank


def build_coordinator(
    settings: CloudSettings, transport: Transport, *, results_dir: Path | None = None, clock=time.monotonic
) -> Coordinator:
    """Wire the bank, the evaluator and the reporter into a coordinator."""
    extractor = service_extractor(settings)
    bank = open_bank(settings, extractor.dim_2d, extractor.dim_3d, extractor.identity)
    evaluator = None
    if settings.data_root is not None:
        cache = FeatureCache(Path(settings.state_dir) / "feature-cache", max_bytes=settings.feature_cache_bytes)
        evaluator = Evaluator(
            settings.data_root, settings.eval_split, extractor, cache=cache, classes=settings.classes
        )
        evaluator.classes()  # a missing data root or unknown class fails here, before any round
    results = results_dir or settings.results_dir or Path(settings.state_dir) / "results"
    reporter = RoundReporter(
        results,
        run_info={
            "policy": settings.scheduling.policy,
            "comm_budget": settings.scheduling.comm_budget,
            "alpha": settings.scheduling.alpha,
            "beta": settings.scheduling.beta,
            "rounds": settings.rounds,
            "seed": settings.seed,
            "feature_identity": extractor.identity,
            "data_root": str(settings.data_root) if settings.data_root else None,
            "eval_split": settings.eval_split,
        },
    )
    return Coordinator(settings, transport, bank, evaluator=evaluator, reporter=reporter, clock=clock)


def run_cloud(settings: CloudSettings) -> None:
    """Run the cloud over MQTT until the last round is done or a stop signal arrives."""
    torch.set_num_threads(settings.torch_threads)
    transport = MqttTransport(settings.mqtt, client_id=Topics(settings.topic_root).client_id("cloud"))
    coordinator = build_coordinator(settings, transport)
    if coordinator.evaluator is not None:
        # Extract the evaluation split while the first rounds run.
        threading.Thread(target=coordinator.evaluator.prepare, name="eval-prepare", daemon=True).start()

    stop_event = threading.Event()
    install_stop_signals(stop_event)
    transport.start()
    try:
        run_nodes([(transport, coordinator)], stop_event=stop_event)
    finally:
        transport.stop()
