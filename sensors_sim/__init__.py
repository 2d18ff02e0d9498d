"""Sensor simulator: dataset readers, the synthetic RGB-D generator and the online stream.

The MVTec 3D-AD layout reader lives in `modiad.dataset`, because the cloud also reads
the test split, and is re-exported here for convenience.
"""

from modiad.dataset import (
    SampleRef,
    list_classes,
    list_samples,
    load_split,
    read_sample,
)
from sensors_sim.stream import build_schedule, partition_classes, split_sources
from sensors_sim.synthetic import (
    CLASS_NAMES,
    DEFECT_TYPES,
    PROFILES,
    generate_dataset,
    render_sample,
)

__all__ = [
    "CLASS_NAMES",
    "DEFECT_TYPES",
    "PROFILES",
    "SampleRef",
    "build_schedule",
    "generate_dataset",
    "list_classes",
    "list_samples",
    "load_split",
    "partition_classes",
    "read_sample",
    "render_sample",
    "split_sources",
]
