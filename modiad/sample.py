"""One multimodal RGB-D sample, as read from disk or received over MQTT."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Sample"]


@dataclass(frozen=True)
class Sample:
    """An organized RGB-D sample.

    `rgb` is uint8 H×W×3. `xyz` is float32 H×W×3 in metres, organized like the image;
    a missing point is (0, 0, 0). `gt_mask` is uint8 H×W with 0 (normal) or 1
    (defect) for test samples and None for training samples. `label` is 0 for a good
    sample and 1 for an anomalous one; `defect_type` is "good" or the defect's name.
    `sample_id` is unique within a dataset, e.g. "bagel/train/good/003".
    """

    sample_id: str
    class_name: str
    rgb: np.ndarray
    xyz: np.ndarray
    gt_mask: np.ndarray | None = None
    label: int = 0
    defect_type: str = "good"
