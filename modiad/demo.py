"""`modiad demo`: the whole fleet on one machine, as separate processes over MQTT.

The demo generates the synthetic set if the dataset is missing. It starts an
embedded broker on a free loopback port unless a broker URL is given, and writes one
config per service into the output folder. Then it launches the sensors, the edges
and the cloud, shows progress per round, and prints the per-class table.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from modiad.errors import ConfigError, DatasetError, ModiadError
from modiad.metrics import format_table

__all__ = ["DemoOptions", "run_demo"]

logger = logging.getLogger(__name__)

DEFAULT_DATA_ROOT = Path("./modiad-data/synthetic")
RESULTS_PARENT = Path("./modiad-results")
PROCESS_STOP_TIMEOUT_S = 20.0
"""Seconds a service gets to exit after SIGTERM before it is killed."""


@dataclass
class DemoOptions:
    """Command-line choices of the demo; None means the embedded default."""

    output: Path | None = None
    broker: str | None = None
    dataset: str = "synthetic"
    data_root: Path | None = None
    profile: str = "demo"
    classes: list[str] | None = None
    features: str = "embedded"
    weights_dir: Path | None = None
    rounds: int = 10
    edges: int = 5
    policy: str = "smg"
    comm_budget: int = 5
    capacity: int = 2
    packet_size: int = 10
    iterations: int = 100
    seed: int = 0
    transport: str = "mqtt"
    timeout_s: float = 3600.0


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Run the demo end to end; return the parsed results.json."""
    if options.broker is not None:
        from modiad.transport.mqtt import parse_broker_url

        parse_broker_url(options.broker)
    output = _prepare_output(options.output)
    print(f"MODIAD demo: results go to {output}", flush=True)

    _check_feature_weights(options)
    data_root = _prepare_dataset(options)
    classes = _select_classes(options, data_root)
    options.classes = classes
    edge_ids = [f"edge-{index}" for index in range(1, options.edges + 1)]
    stream_layout(len(classes), len(edge_ids))  # an uneven layout fails before a broker starts

    if options.transport == "inprocess":
        # No broker is contacted in-process; the URL only has to be valid.
        configs = _write_configs(options, output, data_root, edge_ids, broker_url="mqtt://127.0.0.1:1883")
        return _run_inprocess(configs, output)

    broker_process = None
    broker_url = options.broker
    if broker_url is None:
        broker_process, broker_url = _start_embedded_broker(output)
    configs = _write_configs(options, output, data_root, edge_ids, broker_url=broker_url)

    processes: dict[str, subprocess.Popen] = {}
    try:
        for name in ["sensors", *edge_ids, "cloud"]:
            processes[name] = _launch(name, configs[name], output)
        print(f"started sensors, {len(edge_ids)} edges and the cloud; logs in {output / 'logs'}", flush=True)
        _follow_progress(output, processes, options, broker_url)
    finally:
        _stop_all(processes)
        if broker_process is not None:
            _stop_process("broker", broker_process)

    results = json.loads((output / "results.json").read_text(encoding="utf-8"))
    _print_results(results, output)
    return results


def _prepare_output(output: Path | None) -> Path:
    if output is None:
        output = RESULTS_PARENT / datetime.now().strftime("%Y%m%d-%H%M%S")
    output = Path(output).resolve()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(
            f"output folder {output} already exists and is not empty; choose a new --output, "
            "because a second run there would mix its state, logs and results with the first"
        )
    output.mkdir(parents=True, exist_ok=True)
    return output


def _prepare_dataset(options: DemoOptions) -> Path:
    if options.dataset == "eyecandies":
        return _prepare_eyecandies(options)
    if options.dataset != "synthetic":
        if options.data_root is None:
            raise ConfigError(f"--dataset {options.dataset} needs --data-root pointing at the dataset's folder")
        if not options.data_root.is_dir():
            raise DatasetError(f"data root {options.data_root} not found; pass the folder that contains the class folders")
        return options.data_root.resolve()

    from sensors_sim.synthetic import generate_dataset

    default_root = DEFAULT_DATA_ROOT if options.profile == "demo" else DEFAULT_DATA_ROOT.with_name(
        f"synthetic-{options.profile}"
    )
    root = (options.data_root or default_root).resolve()
    _check_synthetic_set_matches(root, options)
    started = time.perf_counter()
    print(f"synthetic dataset: {root} (generated if missing)", flush=True)
    # Every class is generated even for a --classes subset, so one folder serves any subset.
    generate_dataset(root, profile=options.profile, seed=options.seed)
    print(f"synthetic dataset ready in {time.perf_counter() - started:.1f} s", flush=True)
    return root


def _check_synthetic_set_matches(root: Path, options: DemoOptions) -> None:
    """Raise rather than regenerate a synthetic set made with another profile or seed.

    Another run may be reading that folder, and regenerating would replace its files.
    """
    manifest_path = root / "dataset.json"
    if not manifest_path.is_file():
        return
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DatasetError(f"{manifest_path} is unreadable ({error}); delete {root} or pass another --data-root") from error
    if (manifest.get("profile"), manifest.get("seed")) != (options.profile, options.seed):
        raise ConfigError(
            f"{root} contains the synthetic set of profile {manifest.get('profile')!r} and seed {manifest.get('seed')}, "
            f"not profile {options.profile!r} and seed {options.seed}; pass another --data-root or delete that folder"
        )


def _prepare_eyecandies(options: DemoOptions) -> Path:
    """Convert the raw Eyecandies release at --data-root into the MVTec 3D-AD layout.

    The converted tree is a cache in `eyecandies-mvtec/` next to the results folder, so
    later runs reuse it, and its conversion.json makes a changed source convert again.
    """
    from sensors_sim.eyecandies import convert_eyecandies

    if options.data_root is None:
        raise ConfigError("--dataset eyecandies needs --data-root pointing at the raw release (CandyCane/, ...)")
    results_parent = Path(options.output).resolve().parent if options.output else RESULTS_PARENT.resolve()
    cache = results_parent / "eyecandies-mvtec"
    started = time.perf_counter()
    print(f"Eyecandies: converting {options.data_root} into {cache} (reused if up to date)", flush=True)
    convert_eyecandies(options.data_root, cache)
    print(f"Eyecandies dataset ready in {time.perf_counter() - started:.1f} s", flush=True)
    return cache


def _check_feature_weights(options: DemoOptions) -> None:
    """Fail before any work when the paper preset's weight files are missing."""
    if options.features != "paper":
        return
    from modiad.features.paper import PaperFeatureSettings, check_paper_weights

    check_paper_weights(PaperFeatureSettings(weights_dir=options.weights_dir))


def _select_classes(options: DemoOptions, data_root: Path) -> list[str]:
    from modiad.dataset import list_classes

    available = list_classes(data_root)
    if not options.classes:
        return available
    unknown = sorted(set(options.classes) - set(available))
    if unknown:
        raise DatasetError(f"unknown classes {unknown} in --classes; {data_root} contains {available}")
    return sorted(options.classes)


def stream_layout(num_classes: int, num_edges: int) -> tuple[int, int]:
    """Return (classes per edge, edges per class) for the demo's non-IID stream.

    Each class goes to 2 edges (1 when there is a single edge) and every edge gets
    the same number of classes: 10 classes on 5 edges give 4 classes per edge.
    """
    edges_per_class = 2 if num_edges >= 2 else 1
    if (num_classes * edges_per_class) % num_edges or num_classes * edges_per_class < num_edges:
        raise ConfigError(
            f"{num_classes} classes cannot be spread evenly over {num_edges} edges with each class on "
            f"{edges_per_class} edges; choose --edges so that it divides {num_classes * edges_per_class}"
        )
    return num_classes * edges_per_class // num_edges, edges_per_class


def _write_configs(
    options: DemoOptions, output: Path, data_root: Path, edge_ids: list[str], *, broker_url: str
) -> dict[str, Path]:
    config_dir = output / "config"
    state_dir = output / "state"
    config_dir.mkdir(exist_ok=True)
    mqtt: dict[str, Any] = {"url": broker_url}
    if options.broker is None:
        # The embedded amqtt broker drops a message whose PUBACK takes over 5 s, and a
        # training edge polls less often than that, so acknowledge on receipt there.
        mqtt["ack_after_handling"] = False
    common: dict[str, Any] = {"mqtt": mqtt, "seed": options.seed, "log_level": "INFO"}
    if options.features == "paper":
        common["features_preset"] = "paper"
        common["paper_features"] = {"weights_dir": str(Path(options.weights_dir).resolve())}
    classes = options.classes or []
    classes_per_edge, edges_per_class = stream_layout(len(classes), len(edge_ids))
    documents: dict[str, dict[str, Any]] = {
        "cloud": {
            **common,
            "state_dir": str(state_dir / "cloud"),
            "rounds": options.rounds,
            "expected_edges": edge_ids,
            "data_root": str(data_root),
            "results_dir": str(output),
            "classes": classes,
            "scheduling": {"policy": options.policy, "comm_budget": options.comm_budget},
            "training": {"iterations": options.iterations},
        },
        "sensors": {
            **common,
            "state_dir": str(state_dir / "sensors"),
            "data_root": str(data_root),
            "edges": edge_ids,
            "classes": classes,
            "classes_per_edge": classes_per_edge,
            "edges_per_class": edges_per_class,
            "rounds": options.rounds,
            "packet_size": options.packet_size,
        },
    }
    from sensors_sim.stream import partition_classes

    # The same partition the sensor simulator computes, so each edge accepts only its classes.
    partition = partition_classes(
        sorted(classes), edge_ids, classes_per_edge=classes_per_edge, edges_per_class=edges_per_class
    )
    for edge_id in edge_ids:
        documents[edge_id] = {
            **common,
            "state_dir": str(state_dir / edge_id),
            "edge_id": edge_id,
            "capacity": options.capacity,
            "classes": sorted(partition[edge_id]),
        }
    paths = {}
    for name, document in documents.items():
        path = config_dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=True), encoding="utf-8")
        paths[name] = path
    return paths


def _start_embedded_broker(output: Path) -> tuple[subprocess.Popen, str]:
    from modiad.broker import free_port, wait_for_port

    port = free_port()
    log = (output / "logs").resolve()
    log.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "modiad.broker", "--port", str(port)],
        stdout=(log / "broker.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    wait_for_port("127.0.0.1", port, timeout_s=30.0)
    print(f"embedded broker listening on 127.0.0.1:{port}", flush=True)
    return process, f"mqtt://127.0.0.1:{port}"


def _launch(name: str, config: Path, output: Path) -> subprocess.Popen:
    service = "edge" if name.startswith("edge-") else name
    log_dir = output / "logs"
    log_dir.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "modiad.cli", service, "--config", str(config)]
    if service == "edge":
        command.append("--exit-when-finished")
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        command, stdout=(log_dir / f"{name}.log").open("wb"), stderr=subprocess.STDOUT, env=environment
    )


def _follow_progress(
    output: Path, processes: dict[str, subprocess.Popen], options: DemoOptions, broker_url: str
) -> None:
    """Show live progress and one line per finished round until the cloud exits.

    Fails fast, naming the log to read, when any service exits with an error.
    """
    from modiad.progress import ProgressObserver

    rounds_path = output / "rounds.jsonl"
    printed = 0
    started = time.monotonic()
    observer = ProgressObserver(broker_url, "modiad/v1", expected_edges=options.edges)
    observer.start()
    try:
        while True:
            observer.poll(0.5)
            if _count_lines(rounds_path) > printed:
                observer.clear_line()
                printed = _print_new_rounds(rounds_path, printed, options.rounds, started)
            cloud = processes["cloud"]
            if cloud.poll() is not None:
                observer.clear_line()
                _print_new_rounds(rounds_path, printed, options.rounds, started)
                if cloud.returncode != 0:
                    raise ModiadError(f"the cloud exited with code {cloud.returncode}; see {output / 'logs' / 'cloud.log'}")
                return
            for name, process in processes.items():
                if name != "cloud" and process.poll() not in (None, 0):
                    raise ModiadError(
                        f"{name} exited with code {process.returncode}; see {output / 'logs' / (name + '.log')}"
                    )
            if time.monotonic() - started > options.timeout_s:
                raise ModiadError(
                    f"the demo did not finish within {options.timeout_s:.0f} s; see the logs in {output / 'logs'}"
                )
    finally:
        observer.stop()


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return len(path.read_text(encoding="utf-8").splitlines())


def _print_new_rounds(rounds_path: Path, printed: int, total: int, started: float) -> int:
    if not rounds_path.exists():
        return printed
    lines = rounds_path.read_text(encoding="utf-8").splitlines()
    for line in lines[printed:]:
        summary = json.loads(line)
        mean = summary.get("metrics_mean") or {}
        metric = f"mean I-AUROC {mean['i_auroc']:.3f}, AUPRO@10% {mean['aupro@0.1']:.3f}" if mean else "not evaluated"
        received = len(summary["selection"]) - len(summary["missing_updates"])
        print(
            f"round {summary['round']:>3}/{total}  updates {received}/{len(summary['selection'])}  "
            f"{metric}  ({time.monotonic() - started:.0f} s elapsed)",
            flush=True,
        )
    return len(lines)


def _stop_all(processes: dict[str, subprocess.Popen]) -> None:
    for name, process in processes.items():
        _stop_process(name, process)


def _stop_process(name: str, process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=PROCESS_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        logger.warning("%s did not stop within %.0f s; killing it", name, PROCESS_STOP_TIMEOUT_S)
        process.kill()
        process.wait()


def _run_inprocess(configs: dict[str, Path], output: Path) -> dict[str, Any]:
    from modiad.experiment import run_inprocess
    from modiad.settings import CloudSettings, EdgeSettings, SensorSettings, load_settings

    cloud = load_settings(CloudSettings, configs["cloud"], transport="inprocess")
    edges = [
        load_settings(EdgeSettings, path, transport="inprocess")
        for name, path in sorted(configs.items())
        if name.startswith("edge-")
    ]
    sensors = load_settings(SensorSettings, configs["sensors"], transport="inprocess")
    print("running every service in this process (transport: inprocess)", flush=True)

    # The fleet runs in a worker thread so this thread can print each round as it ends.
    failure: list[BaseException] = []

    def _run() -> None:
        try:
            run_inprocess(cloud, edges, sensors, results_dir=output)
        except BaseException as error:  # handed to the main thread and raised there
            failure.append(error)

    worker = threading.Thread(target=_run, name="inprocess-fleet", daemon=True)
    started = time.monotonic()
    worker.start()
    printed = 0
    while worker.is_alive():
        worker.join(timeout=0.5)
        printed = _print_new_rounds(output / "rounds.jsonl", printed, cloud.rounds, started)
    if failure:
        raise failure[0]
    results = json.loads((output / "results.json").read_text(encoding="utf-8"))
    _print_results(results, output)
    return results


def _print_results(results: dict[str, Any], output: Path) -> None:
    table = format_table(results["classes"], results["mean"])
    (output / "table.txt").write_text(table + "\n", encoding="utf-8")
    print()
    print(table)
    print()
    print(f"results: {output / 'results.json'}, {output / 'results.csv'}, round log {output / 'rounds.jsonl'}")
