"""Compare the paper preset (DINO ViT-B/8 + Point-MAE) with the embedded preset on this CPU.

Each of the four measurements (embedded 2D, embedded 3D, paper 2D, paper 3D) runs in
a fresh process, so its peak memory is its own. The paper preset uses randomly
initialised full-size models: speed and memory do not depend on the weight values,
and no weight file is needed. The scene is the 224×224 synthetic scene of
`bench_features.py` (12 144 foreground points).

    python benchmarks/bench_features_paper.py [--repeats 3] [--threads 1]

Wall time depends on what else runs on the machine, so CPU time of the process
(`time.process_time`) is printed next to it. Peak memory is the process's maximum
resident set size, after building the extractor and after the timed calls.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import statistics
import time
from collections.abc import Callable

STAGES = ("embedded 2D", "embedded 3D", "paper 2D", "paper 3D")


def peak_rss_mib() -> float:
    """Return the process's peak resident set size in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_call(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Return the median (wall seconds, CPU seconds) of `repeats` calls after one warm-up call."""
    function()
    wall, cpu = [], []
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
    return statistics.median(wall), statistics.median(cpu)


def measure_stage(stage: str, repeats: int, threads: int) -> dict[str, float]:
    """Build one preset in this process and time one modality; return seconds and MiB."""
    import torch
    from bench_features import render_scene

    torch.set_num_threads(threads)
    rgb, xyz, _ = render_scene()

    if stage.startswith("embedded"):
        import open3d as o3d

        from modiad.features.embedded import EmbeddedExtractor

        o3d.utility.set_max_threads(threads)
        embedded = EmbeddedExtractor()
        call = (lambda: embedded.features_2d([rgb])) if stage.endswith("2D") else (lambda: embedded.features_3d(xyz))
    else:
        from modiad.features.dino import build_dino
        from modiad.features.paper import PaperExtractor, PaperFeatureSettings
        from modiad.features.pointmae import PointMAEEncoder

        torch.manual_seed(0)
        paper = PaperExtractor.from_modules(PaperFeatureSettings(), build_dino(), PointMAEEncoder())
        call = (lambda: paper.features_2d([rgb])) if stage.endswith("2D") else (lambda: paper.features_3d([xyz]))

    built_mib = peak_rss_mib()
    wall, cpu = time_call(call, repeats)
    return {"wall": wall, "cpu": cpu, "built_mib": built_mib, "peak_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="Timed calls per measurement (default 3).")
    parser.add_argument("--threads", type=int, default=1, help="torch and open3d threads (default 1).")
    arguments = parser.parse_args()

    import numpy
    import torch

    print(f"python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}, {platform.machine()}")
    print(f"{arguments.repeats} timed calls per measurement after one warm-up, {arguments.threads} thread(s)\n")

    context = multiprocessing.get_context("spawn")
    results = {}
    for stage in STAGES:
        with context.Pool(1) as pool:
            results[stage] = pool.apply(measure_stage, (stage, arguments.repeats, arguments.threads))

    print("| measurement | wall s/sample | CPU s/sample | samples/s (CPU) | peak RSS after build | peak RSS after runs |")
    print("|---|---|---|---|---|---|")
    for stage, result in results.items():
        print(
            f"| {stage} | {result['wall']:.3f} | {result['cpu']:.3f} | {1.0 / result['cpu']:.2f} "
            f"| {result['built_mib']:.0f} MiB | {result['peak_mib']:.0f} MiB |"
        )

    for label in ("wall", "cpu"):
        embedded = results["embedded 2D"][label] + results["embedded 3D"][label]
        paper = results["paper 2D"][label] + results["paper 3D"][label]
        print(f"\ntotal {label}: embedded {embedded:.3f} s, paper {paper:.3f} s per sample, paper/embedded = {paper / embedded:.1f}×")


if __name__ == "__main__":
    main()
