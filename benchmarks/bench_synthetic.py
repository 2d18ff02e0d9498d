"""Benchmark the synthetic dataset generator on one core.

Generates a profile (default `demo`: 10 classes, 650 samples of 224×224) into a fresh
temporary folder and reports wall time, CPU time of this process, time per sample and
size on disk. The target is under 30 s wall time for `demo`. Generation is single
threaded, and the numpy arithmetic it uses runs on one core.

CPU time is reported next to wall time because other processes on a shared host
inflate wall time. The load average at the start is printed with both.

Run from the repository root: ``python benchmarks/bench_synthetic.py [--profile small]``
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from sensors_sim.synthetic import DEFECT_TYPES, PROFILES, generate_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="demo", help="dataset profile to generate")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--repeats", type=int, default=1, help="number of timed generations")
    options = parser.parse_args()

    spec = PROFILES[options.profile]
    per_class = spec.train + spec.validation + spec.test_good + spec.test_per_defect * len(DEFECT_TYPES)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"profile {options.profile}: {spec.image_size}×{spec.image_size}, {per_class * 10} samples")

    for repeat in range(options.repeats):
        with tempfile.TemporaryDirectory() as folder:
            load = os.getloadavg()[0]
            wall_start = time.perf_counter()
            cpu_start = time.process_time()
            root = generate_dataset(Path(folder) / "synthetic", profile=options.profile, seed=options.seed)
            wall = time.perf_counter() - wall_start
            cpu = time.process_time() - cpu_start
            size_mb = sum(path.stat().st_size for path in root.rglob("*") if path.is_file()) / 1e6
            print(
                f"run {repeat + 1}: wall {wall:.1f} s, CPU {cpu:.1f} s, "
                f"{1000 * wall / (per_class * 10):.1f} ms per sample (wall), {size_mb:.0f} MB on disk, "
                f"load average at start {load:.1f}"
            )


if __name__ == "__main__":
    main()
