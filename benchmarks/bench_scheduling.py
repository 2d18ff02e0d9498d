"""Time the class-update schedulers on a factory-scale round.

Instance: K edges each holding `classes_per_edge` distinct classes drawn from C
classes, N_{k,c} uniform in [1, 200], Γ_k^cop per edge and Γ^com for the round.
Two update histories are timed: the first round (every B_c = 0) and a later round
(B_c uniform in [0, 100]). Each policy runs `--repeats` times per history after one
warm-up call. The script prints the mean and median wall time and CPU time (process
time) per call in ms. On a shared machine the CPU time is the better measure of the
work, because wall time also counts the time other processes hold the core.

With --gap-rounds R, it also draws R paper-sized rounds (5 edges, 10 classes, each
edge holding 4 classes and each class on 2 edges, N_{k,c} uniform in [1, 30], B_c
uniform in [0, 20], Γ_k^cop = 2, Γ^com = 5) and prints SMG's optimality gap against
the exact optimum, with the time of the exact search.

Run from the repository root: PYTHONPATH=. python benchmarks/bench_scheduling.py [--edges 1000 --classes 1000 ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from cloud.exact import exact_best, optimality_gap
from cloud.scheduling import SCHEDULERS


def make_round(
    edges: int, classes: int, classes_per_edge: int, capacity: int, later_round: bool, seed: int
) -> tuple[dict[str, dict[str, int]], dict[str, int], dict[str, int]]:
    """Return (counts, cumulative_updates, edge_capacity) of one synthetic round."""
    rng = np.random.default_rng(seed)
    class_names = [f"class{c:04d}" for c in range(classes)]
    counts: dict[str, dict[str, int]] = {}
    for k in range(edges):
        edge_classes = rng.choice(classes, size=classes_per_edge, replace=False)
        samples = rng.integers(1, 201, size=classes_per_edge)
        counts[f"edge{k:04d}"] = {class_names[c]: int(n) for c, n in zip(edge_classes, samples, strict=True)}
    past = rng.integers(0, 101, size=classes) if later_round else np.zeros(classes, dtype=np.int64)
    cumulative_updates = {name: int(b) for name, b in zip(class_names, past, strict=True)}
    edge_capacity = {edge_id: capacity for edge_id in counts}
    return counts, cumulative_updates, edge_capacity


def time_policy(name: str, inputs: tuple, budget: int, repeats: int) -> tuple[list[float], list[float]]:
    """Return the wall and CPU times of each of `repeats` calls, in ms, after one warm-up call."""
    policy = SCHEDULERS[name]
    counts, cumulative_updates, edge_capacity = inputs
    policy(counts, cumulative_updates, edge_capacity, budget, seed=0)
    wall_ms = []
    cpu_ms = []
    for repeat in range(repeats):
        wall_start = time.perf_counter()
        cpu_start = time.process_time()
        policy(counts, cumulative_updates, edge_capacity, budget, seed=repeat)
        cpu_ms.append((time.process_time() - cpu_start) * 1000.0)
        wall_ms.append((time.perf_counter() - wall_start) * 1000.0)
    return wall_ms, cpu_ms


def paper_round(rng: np.random.Generator) -> tuple[dict[str, dict[str, int]], dict[str, int], dict[str, int]]:
    """Return one paper-sized round: edge k has samples of classes 2k .. 2k+3 (mod 10)."""
    counts = {f"edge{k}": {f"class{(2 * k + i) % 10}": int(rng.integers(1, 31)) for i in range(4)} for k in range(5)}
    cumulative_updates = {f"class{c}": int(rng.integers(0, 21)) for c in range(10)}
    edge_capacity = {edge_id: 2 for edge_id in counts}
    return counts, cumulative_updates, edge_capacity


def report_gaps(rounds: int, seed: int) -> None:
    """Print SMG's and the baselines' optimality gaps on `rounds` paper-sized rounds."""
    rng = np.random.default_rng(seed)
    gaps: dict[str, list[float]] = {name: [] for name in SCHEDULERS}
    exact_ms = []
    for _ in range(rounds):
        counts, cumulative_updates, edge_capacity = paper_round(rng)
        start = time.perf_counter()
        exact_best(counts, cumulative_updates, edge_capacity, 5)
        exact_ms.append((time.perf_counter() - start) * 1000.0)
        for name, policy in SCHEDULERS.items():
            selection = policy(counts, cumulative_updates, edge_capacity, 5, seed=int(rng.integers(2**31)))
            gaps[name].append(optimality_gap(selection, counts, cumulative_updates, edge_capacity, 5))

    print(f"paper-sized rounds: {rounds}, exact search median {statistics.median(exact_ms):.0f} ms")
    for name, values in gaps.items():
        optimal = sum(1 for gap in values if gap == 0.0)
        print(
            f"  {name:3s} gap mean {statistics.fmean(values):.4f}  max {max(values):.4f}  optimal in {optimal}/{rounds}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=1000, help="K, number of edges")
    parser.add_argument("--classes", type=int, default=1000, help="C, number of classes in the bank")
    parser.add_argument("--classes-per-edge", type=int, default=20, help="classes each edge has samples of")
    parser.add_argument("--capacity", type=int, default=3, help="Γ_k^cop, class updates per edge per round")
    parser.add_argument("--budget", type=int, default=2000, help="Γ^com, class updates per round in total")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per policy and history")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic round")
    parser.add_argument("--gap-rounds", type=int, default=0, help="paper-sized rounds for the optimality gap")
    args = parser.parse_args()

    if args.gap_rounds:
        report_gaps(args.gap_rounds, args.seed)

    print(
        f"K={args.edges} C={args.classes} classes/edge={args.classes_per_edge} "
        f"capacity={args.capacity} budget={args.budget} repeats={args.repeats}"
    )
    print(f"load average before: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    for history, later_round in (("first round", False), ("later round", True)):
        inputs = make_round(args.edges, args.classes, args.classes_per_edge, args.capacity, later_round, args.seed)
        selected = len(SCHEDULERS["smg"](*inputs, args.budget))
        print(f"{history}: smg selects {selected} pairs")
        for name in SCHEDULERS:
            wall_ms, cpu_ms = time_policy(name, inputs, args.budget, args.repeats)
            print(
                f"  {name:3s} wall mean {statistics.fmean(wall_ms):6.1f} median {statistics.median(wall_ms):6.1f} ms"
                f"   cpu mean {statistics.fmean(cpu_ms):6.1f} median {statistics.median(cpu_ms):6.1f} ms"
            )


if __name__ == "__main__":
    main()
