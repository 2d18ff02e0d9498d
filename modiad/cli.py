"""The `modiad` command line: the demo and the three services."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from modiad.errors import ModiadError
from modiad.logsetup import configure_logging

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modiad", description="Federated, online, multimodal industrial anomaly detection over MQTT."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run sensors, edges and the cloud on this machine and print the results")
    demo.add_argument("--output", type=Path, help="results folder (default: a new time-stamped folder under ./modiad-results/)")
    demo.add_argument("--broker", help="broker URL such as mqtt://127.0.0.1:1883 (default: start an embedded broker)")
    demo.add_argument("--dataset", default="synthetic", choices=["synthetic", "mvtec3d", "eyecandies"], help="dataset to replay")
    demo.add_argument("--data-root", type=Path, help="dataset folder (default for synthetic: ./modiad-data/synthetic; for eyecandies: the raw release, converted into a cache beside the output)")
    demo.add_argument(
        "--profile", default="demo", choices=["demo", "small", "tiny", "full"],
        help=(
            "size of the generated synthetic set: demo (224 px, 40 training samples per class), small (64 px, 6), "
            "tiny (224 px, 2; a pipeline check for slow extractors) or full (224 px, 210)"
        ),
    )
    demo.add_argument(
        "--classes", help="comma-separated classes to stream and evaluate (default: every class of the dataset)"
    )
    demo.add_argument(
        "--features", default="embedded", choices=["embedded", "paper"],
        help="feature preset: embedded (shipped weights, CPU-friendly) or paper (DINO ViT-B/8 + Point-MAE, needs --weights-dir)",
    )
    demo.add_argument(
        "--weights-dir", type=Path,
        help="folder with dino_vitbase8_pretrain.pth and point_mae_pretrain.pth for --features paper",
    )
    demo.add_argument("--rounds", type=int, default=10, help="rounds to run (default 10)")
    demo.add_argument("--edges", type=int, default=5, help="edge gateways (default 5)")
    demo.add_argument("--policy", default="smg", choices=["smg", "rs", "so", "bo"], help="scheduler (default smg)")
    demo.add_argument("--comm-budget", type=int, default=5, help="Γ^com: class updates per round (default 5)")
    demo.add_argument("--capacity", type=int, default=2, help="Γ_k^cop: class updates per edge per round (default 2)")
    demo.add_argument("--packet-size", type=int, default=10, help="P: samples per edge per round (default 10)")
    demo.add_argument("--iterations", type=int, default=100, help="τ: Adam iterations per class update (default 100)")
    demo.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    demo.add_argument("--transport", default="mqtt", choices=["mqtt", "inprocess"], help="message transport (default mqtt)")

    for name, help_text in (
        ("cloud", "run the round coordinator"),
        ("edge", "run one edge gateway"),
        ("sensors", "replay a dataset as the online sensor stream"),
    ):
        service = commands.add_parser(name, help=help_text)
        service.add_argument("--config", type=Path, help="YAML settings file (examples in config/)")
        if name == "edge":
            service.add_argument("--edge-id", help="override the edge id of the config")
            service.add_argument(
                "--exit-when-finished", action="store_true", help="exit when the cloud announces its last round"
            )

    from modiad.datacli import add_data_parser

    add_data_parser(commands)
    return parser


def _validate_demo(arguments: argparse.Namespace) -> None:
    for option in ("rounds", "edges", "comm_budget", "capacity", "packet_size", "iterations"):
        value = getattr(arguments, option)
        if value < (0 if option in ("comm_budget", "capacity") else 1):
            raise ModiadError(f"--{option.replace('_', '-')} must be positive, got {value}")
    if arguments.features == "paper" and arguments.weights_dir is None:
        raise ModiadError("--features paper needs --weights-dir, the folder that contains the DINO and Point-MAE weights")


def _run_demo(arguments: argparse.Namespace) -> int:
    from modiad.demo import DemoOptions, run_demo

    _validate_demo(arguments)
    options = DemoOptions(
        output=arguments.output,
        broker=arguments.broker,
        dataset=arguments.dataset,
        data_root=arguments.data_root,
        profile=arguments.profile,
        classes=[name.strip() for name in arguments.classes.split(",") if name.strip()] if arguments.classes else None,
        features=arguments.features,
        weights_dir=arguments.weights_dir,
        rounds=arguments.rounds,
        edges=arguments.edges,
        policy=arguments.policy,
        comm_budget=arguments.comm_budget,
        capacity=arguments.capacity,
        packet_size=arguments.packet_size,
        iterations=arguments.iterations,
        seed=arguments.seed,
        transport=arguments.transport,
    )
    run_demo(options)
    return 0


def _run_service(arguments: argparse.Namespace) -> int:
    from modiad.settings import CloudSettings, EdgeSettings, SensorSettings, load_settings

    if arguments.command == "cloud":
        from cloud.service import run_cloud

        settings = load_settings(CloudSettings, arguments.config)
        configure_logging(settings.log_level, "cloud")
        run_cloud(settings)
    elif arguments.command == "edge":
        from edge.service import run_edge

        settings = load_settings(EdgeSettings, arguments.config, edge_id=arguments.edge_id)
        configure_logging(settings.log_level, settings.edge_id)
        run_edge(settings, exit_when_finished=arguments.exit_when_finished)
    else:
        from sensors_sim.service import run_sensors

        settings = load_settings(SensorSettings, arguments.config)
        configure_logging(settings.log_level, "sensors")
        run_sensors(settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `modiad` console script; returns the exit code."""
    arguments = _build_parser().parse_args(argv)
    if arguments.command == "demo":
        configure_logging("WARNING", "demo")
    try:
        if arguments.command == "demo":
            return _run_demo(arguments)
        if arguments.command == "data":
            from modiad.datacli import run_data

            configure_logging("INFO", "data")
            return run_data(arguments)
        return _run_service(arguments)
    except ModiadError as error:
        print(f"modiad {arguments.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # A state, output or data path that cannot be created, read or written.
        print(f"modiad {arguments.command}: error: {error}; check the path and its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"modiad {arguments.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
