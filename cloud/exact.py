"""Exact maximum of the scheduling objective, to measure SMG's optimality gap.

`exact_best` enumerates every feasible selection of a small instance and keeps the one
with the largest F(S), the objective that SMG maximises greedily (see
`cloud.scheduling.objective`). A selection is feasible when it contains only candidate
pairs, at most Γ_k^cop pairs per edge and at most Γ^com pairs in total.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from cloud.scheduling import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    DEFAULT_EPSILON,
    SchedulingProblem,
    check_parameters,
)

__all__ = ["MAX_FEASIBLE_SETS", "count_feasible_sets", "exact_best", "optimality_gap"]

logger = logging.getLogger(__name__)

MAX_FEASIBLE_SETS = 2**20
"""Largest number of feasible selections `exact_best` enumerates by default."""

_SETS_PER_BATCH = 20_000
"""Selections scored per vectorised batch; bounds the (batch, C) work arrays."""

Pair = tuple[str, str]


def count_feasible_sets(problem: SchedulingProblem, comm_budget: int, stop_above: int | None = None) -> int:
    """Return the number of feasible selections, the empty one included.

    An edge with n candidate classes and capacity Γ contributes the polynomial
    Σ_{j ≤ Γ} C(n, j) x^j. The product over edges, cut at degree Γ^com, counts the
    selections by size, and the sum of its coefficients counts them all. The count
    only grows as edges are multiplied in, so with `stop_above` set the function
    returns as soon as a partial count exceeds it, and that partial count is a lower
    bound of the full one.
    """
    pairs_per_edge = np.bincount(problem.pair_edge, minlength=len(problem.edges)).tolist()
    by_size = [1]
    for edge_pairs, capacity in zip(pairs_per_edge, problem.capacity.tolist(), strict=True):
        edge_sizes = [math.comb(edge_pairs, j) for j in range(min(edge_pairs, capacity) + 1)]
        product = [0] * min(len(by_size) + len(edge_sizes) - 1, comm_budget + 1)
        for i, ways in enumerate(by_size):
            for j, edge_ways in enumerate(edge_sizes):
                if i + j < len(product):
                    product[i + j] += ways * edge_ways
        by_size = product
        if stop_above is not None and sum(by_size) > stop_above:
            break
    return sum(by_size)


def exact_best(
    counts: Mapping[str, Mapping[str, int]],
    cumulative_updates: Mapping[str, int],
    edge_capacity: Mapping[str, int],
    comm_budget: int,
    *,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    epsilon: float = DEFAULT_EPSILON,
    max_sets: int = MAX_FEASIBLE_SETS,
) -> tuple[list[Pair], float]:
    """Return a feasible selection with the largest F(S), and that F(S).

    The selection is sorted by edge id and then class name. Among selections with the
    same F, the first one enumerated wins (edges in id order, smaller subsets first).
    Takes the same inputs as the schedulers. Raises ValueError when the instance has
    more than `max_sets` feasible selections, because enumeration time grows with
    their number.
    """
    budget = check_parameters(comm_budget, alpha=alpha, beta=beta, epsilon=epsilon)
    problem = SchedulingProblem.from_inputs(counts, cumulative_updates, edge_capacity)
    feasible_sets = count_feasible_sets(problem, budget, stop_above=max_sets)
    if feasible_sets > max_sets:
        raise ValueError(
            f"instance too large for exact search: at least {feasible_sets} feasible selections "
            f"({problem.pair_count.size} candidate pairs), limit {max_sets}; "
            "use fewer edges, classes or a smaller budget, or raise max_sets"
        )

    best_positions: tuple[int, ...] = ()
    best_batch_value = 0.0
    selections = _feasible_selections(problem, budget)
    while batch := list(itertools.islice(selections, _SETS_PER_BATCH)):
        values = _batch_values(problem, batch, alpha, beta, epsilon)
        index = int(values.argmax())
        if values[index] > best_batch_value:
            best_positions, best_batch_value = batch[index], float(values[index])

    # Report F of the winner as `objective` computes it, so equal sets give equal values.
    best_value = problem.value(best_positions, alpha, beta, epsilon)
    logger.debug("exact search scored %d feasible selections, best F = %.6g", feasible_sets, best_value)
    return problem.names_of(sorted(best_positions)), best_value


def optimality_gap(
    selection: Sequence[Pair],
    counts: Mapping[str, Mapping[str, int]],
    cumulative_updates: Mapping[str, int],
    edge_capacity: Mapping[str, int],
    comm_budget: int,
    *,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    epsilon: float = DEFAULT_EPSILON,
    max_sets: int = MAX_FEASIBLE_SETS,
) -> float:
    """Return (F(best) − F(selection)) / F(best), in [0, 1], or 0 when F(best) = 0.

    Raises ValueError when the selection is infeasible (a repeated or non-candidate
    pair, more than Γ_k^cop pairs on an edge, or more than Γ^com pairs) and when the
    instance is too large for `exact_best`.
    """
    budget = check_parameters(comm_budget, alpha=alpha, beta=beta, epsilon=epsilon)
    problem = SchedulingProblem.from_inputs(counts, cumulative_updates, edge_capacity)
    positions = problem.positions_of(selection)
    _check_feasible(problem, positions, budget)

    _, best_value = exact_best(
        counts,
        cumulative_updates,
        edge_capacity,
        budget,
        alpha=alpha,
        beta=beta,
        epsilon=epsilon,
        max_sets=max_sets,
    )
    value = problem.value(positions, alpha, beta, epsilon)
    if best_value == 0.0 or value >= best_value:
        # value > best_value only by rounding, when the search kept another set of equal F.
        return 0.0
    return (best_value - value) / best_value


def _feasible_selections(problem: SchedulingProblem, budget: int):
    """Yield every feasible selection as a tuple of candidate pair positions."""
    edge_bounds = np.searchsorted(problem.pair_edge, np.arange(len(problem.edges) + 1)).tolist()
    choices_per_edge = []
    for k, capacity in enumerate(problem.capacity.tolist()):
        edge_pairs = range(edge_bounds[k], edge_bounds[k + 1])
        choices = [
            subset
            for size in range(min(len(edge_pairs), capacity) + 1)
            for subset in itertools.combinations(edge_pairs, size)
        ]
        choices_per_edge.append(choices)

    def extend(k: int, chosen: tuple[int, ...]):
        if k == len(choices_per_edge):
            yield chosen
            return
        for subset in choices_per_edge[k]:
            if len(chosen) + len(subset) <= budget:
                yield from extend(k + 1, chosen + subset)

    yield from extend(0, ())


def _batch_values(
    problem: SchedulingProblem, batch: list[tuple[int, ...]], alpha: float, beta: float, epsilon: float
) -> np.ndarray:
    """Return F of each selection in `batch`, shape (len(batch),), computed for all at once."""
    sizes = np.fromiter((len(positions) for positions in batch), dtype=np.intp, count=len(batch))
    flat = np.fromiter(itertools.chain.from_iterable(batch), dtype=np.intp, count=int(sizes.sum()))
    owner = np.repeat(np.arange(len(batch)), sizes)
    class_count = len(problem.classes)
    if class_count == 0:
        return np.zeros(len(batch))

    sufficiency = np.bincount(owner, weights=problem.pair_sufficiency[flat], minlength=len(batch))
    added = np.bincount(owner * class_count + problem.pair_class[flat], minlength=len(batch) * class_count)
    added = added.reshape(len(batch), class_count).astype(np.float64)

    updates = problem.base_updates + added
    total = updates.sum(axis=1, keepdims=True)
    share = np.divide(updates, total, out=np.zeros_like(updates), where=total > 0)
    weights = np.log1p(1.0 / (share + epsilon))
    balance = (added * weights).sum(axis=1) / weights.sum(axis=1)
    return alpha * sufficiency + beta * balance


def _check_feasible(problem: SchedulingProblem, positions: np.ndarray, budget: int) -> None:
    if positions.size > budget:
        raise ValueError(f"selection has {positions.size} pairs, more than comm_budget = {budget}")
    per_edge = np.bincount(problem.pair_edge[positions], minlength=len(problem.edges))
    over = np.flatnonzero(per_edge > problem.capacity)
    if over.size:
        k = int(over[0])
        raise ValueError(
            f"selection gives edge {problem.edges[k]!r} {per_edge[k]} classes, "
            f"more than its capacity {problem.capacity[k]}"
        )
