"""Class-wise aggregation of uploaded updates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["aggregate_class"]


def aggregate_class(updates: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Return the element-wise mean of one class's uploaded weights.

    Every update must hold the same parameter names and shapes (the caller has
    validated them). The sum runs in float64 in the given order, so callers pass
    updates sorted by edge id to get bit-identical banks across transports.
    """
    if not updates:
        raise ValueError("aggregate_class got no updates; a class that no edge updated keeps its model, so do not call it")
    names = sorted(updates[0])
    result: dict[str, np.ndarray] = {}
    for name in names:
        total = np.zeros(updates[0][name].shape, dtype=np.float64)
        for update in updates:
            total += update[name]
        result[name] = (total / len(updates)).astype(np.float32)
    return result
