"""Centralized upper bound: train each class's mapper pair on all its training samples.

This is the accuracy the federated run approaches when every class gets enough
updates. It extracts features once (cached in --cache), trains with the same code
the edges run, and scores the test split with the same code the cloud runs.

    python benchmarks/centralized_cfm.py --data-root ./modiad-data/synthetic --iterations 500
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from modiad.dataset import list_classes, list_samples, read_sample
from modiad.features.base import FeatureMaps
from modiad.features.embedded import EmbeddedExtractor, EmbeddedFeatureSettings
from modiad.mapper import init_mapper_pair
from modiad.metrics import class_report, format_table, mean_report
from modiad.scoring import anomaly_map, image_score
from modiad.training import train_local


def _extract(extractor, root: Path, class_name: str, split: str, cache: Path):
    path = cache / f"{class_name}-{split}.npz"
    if path.exists():
        data = np.load(path)
        return [dict(zip(data.files, values)) for values in zip(*(data[name] for name in data.files))]
    records = []
    for ref in list_samples(root, class_name, split):
        sample = read_sample(ref)
        maps = extractor.extract(sample.rgb, sample.xyz)
        mask = sample.gt_mask if sample.gt_mask is not None else np.zeros(sample.rgb.shape[:2], np.uint8)
        records.append({"f2d": maps.f2d.astype(np.float16), "f3d": maps.f3d.astype(np.float16),
                        "foreground": maps.foreground, "gt": mask, "label": np.int64(sample.label)})
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{name: np.stack([record[name] for record in records]) for name in records[0]})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/modiad-cfm-cache"))
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--batch-pixels", type=int, default=1024)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--classes", nargs="*")
    arguments = parser.parse_args()
    torch.set_num_threads(1)

    extractor = EmbeddedExtractor(EmbeddedFeatureSettings())
    per_class = {}
    for class_name in arguments.classes or list_classes(arguments.data_root):
        started = time.perf_counter()
        train = _extract(extractor, arguments.data_root, class_name, "train", arguments.cache)
        test = _extract(extractor, arguments.data_root, class_name, "test", arguments.cache)
        extracted = time.perf_counter() - started

        f2d = np.concatenate([r["f2d"][r["foreground"]] for r in train]).astype(np.float32)
        f3d = np.concatenate([r["f3d"][r["foreground"]] for r in train]).astype(np.float32)
        pair = init_mapper_pair(f2d.shape[1], f3d.shape[1], seed=0, class_name=class_name)
        started = time.perf_counter()
        train_local(pair, f2d, f3d, iterations=arguments.iterations, learning_rate=arguments.learning_rate,
                    batch_pixels=arguments.batch_pixels, seed=0)
        trained = time.perf_counter() - started

        maps, scores = [], []
        for record in test:
            feature_maps = FeatureMaps(record["f2d"].astype(np.float32), record["f3d"].astype(np.float32),
                                       record["foreground"])
            full = anomaly_map(pair, feature_maps, *record["gt"].shape)
            maps.append(full)
            scores.append(image_score(full))
        per_class[class_name] = class_report(scores, [int(r["label"]) for r in test], maps, [r["gt"] for r in test])
        print(f"{class_name}: I-AUROC {per_class[class_name]['i_auroc']:.3f} "
              f"(extract {extracted:.1f} s, train {trained:.1f} s)", flush=True)

    print(format_table(per_class, mean_report(per_class)))


if __name__ == "__main__":
    main()
