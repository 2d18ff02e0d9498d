"""Tests of the class-update schedulers and the exact optimum.

SMG is checked against `reference_smg`, a direct implementation of the definition that
recomputes F(S ∪ {p}) − F(S) from scratch for every feasible pair at every step. The
baselines are checked against plain sorted() versions of their rules.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud import scheduling
from cloud.exact import count_feasible_sets, exact_best, optimality_gap
from cloud.scheduling import (
    GAIN_TIE_TOLERANCE,
    SCHEDULERS,
    SchedulingProblem,
    balanced_only,
    objective,
    random_selection,
    smg,
    sufficient_only,
)

FULL_SHARE_WEIGHT = math.log(1.0 + 1.0 / (1.0 + 1e-6))  # V of a class with π = 1 at ε = 1e-6, ≈ ln 2
NO_UPDATES_WEIGHT = math.log(1.0 + 1.0 / 1e-6)  # V of a class with π = 0 at ε = 1e-6


# Plain reference ---------------------------------------------------------------


def candidate_pairs(counts, edge_capacity):
    return [
        (edge_id, class_name)
        for edge_id, row in counts.items()
        for class_name, samples in row.items()
        if samples > 0 and edge_capacity[edge_id] > 0
    ]


def reference_objective(selection, counts, cumulative_updates, edge_capacity, alpha, beta, epsilon):
    """F(S) written out term by term with the math module."""
    if not selection:
        return 0.0
    max_sufficiency = max(math.log(1 + counts[k][c]) for k, c in candidate_pairs(counts, edge_capacity))
    classes = set(cumulative_updates) | {c for row in counts.values() for c in row}
    added = Counter(c for _, c in selection)
    updates = {c: cumulative_updates.get(c, 0) + added[c] for c in classes}
    total = sum(updates.values())
    share = {c: (updates[c] / total if total > 0 else 0.0) for c in classes}
    weight = {c: math.log(1 + 1 / (share[c] + epsilon)) for c in classes}
    weight_sum = sum(weight.values())
    return sum(
        alpha * math.log(1 + counts[k][c]) / max_sufficiency + beta * weight[c] / weight_sum for k, c in selection
    )


def reference_smg(counts, cumulative_updates, edge_capacity, budget, alpha, beta, epsilon):
    """Greedy by the definition: score every feasible pair with F(S ∪ {p}) − F(S)."""
    tolerance = GAIN_TIE_TOLERANCE * (alpha + beta)
    selection = []
    used = Counter()
    while len(selection) < budget:
        current = reference_objective(selection, counts, cumulative_updates, edge_capacity, alpha, beta, epsilon)
        gains = []
        for k, c in candidate_pairs(counts, edge_capacity):
            if (k, c) in selection or used[k] >= edge_capacity[k]:
                continue
            after = reference_objective(
                selection + [(k, c)], counts, cumulative_updates, edge_capacity, alpha, beta, epsilon
            )
            gains.append((after - current, k, c))
        if not gains:
            break
        best_gain = max(gain for gain, _, _ in gains)
        if best_gain <= tolerance:
            break
        near_best = [(-counts[k][c], k, c) for gain, k, c in gains if gain >= best_gain - tolerance]
        _, k, c = min(near_best)
        selection.append((k, c))
        used[k] += 1
    return selection


def brute_force_best(counts, cumulative_updates, edge_capacity, budget, alpha, beta, epsilon):
    """Largest F over all subsets of candidate pairs that respect capacity and budget."""
    pairs = candidate_pairs(counts, edge_capacity)
    best = 0.0
    for size in range(min(budget, len(pairs)) + 1):
        for subset in itertools.combinations(pairs, size):
            per_edge = Counter(k for k, _ in subset)
            if any(per_edge[k] > edge_capacity[k] for k in per_edge):
                continue
            value = reference_objective(list(subset), counts, cumulative_updates, edge_capacity, alpha, beta, epsilon)
            best = max(best, value)
    return best


def assert_feasible(selection, counts, edge_capacity, budget):
    assert len(selection) <= budget
    assert len(set(selection)) == len(selection)
    for k, c in selection:
        assert counts[k].get(c, 0) > 0, f"{k} has no samples of {c}"
    per_edge = Counter(k for k, _ in selection)
    for k, used in per_edge.items():
        assert used <= edge_capacity[k], f"{k} got {used} classes, capacity {edge_capacity[k]}"


# Random small instances -----------------------------------------------------------

EDGE_IDS = ["e0", "e1", "e2", "e3"]
CLASS_NAMES = ["bagel", "cable", "dowel", "foam", "rope"]


@st.composite
def instances(draw, max_edges=4, max_classes=5):
    edges = EDGE_IDS[: draw(st.integers(1, max_edges))]
    classes = CLASS_NAMES[: draw(st.integers(1, max_classes))]
    counts = {}
    for edge_id in edges:
        edge_classes = draw(st.lists(st.sampled_from(classes), unique=True, max_size=len(classes)))
        counts[edge_id] = {c: draw(st.integers(0, 12)) for c in edge_classes}
    history = draw(st.lists(st.sampled_from(classes + ["ghost"]), unique=True))
    cumulative_updates = {c: draw(st.integers(0, 9)) for c in history}
    edge_capacity = {edge_id: draw(st.integers(0, 3)) for edge_id in edges}
    budget = draw(st.integers(0, 7))
    alpha = draw(st.sampled_from([0.0, 0.3, 0.5, 1.0]))
    beta = draw(st.sampled_from([0.0, 0.5, 0.7, 2.0]))
    epsilon = draw(st.sampled_from([1e-6, 1e-3, 0.5]))
    return counts, cumulative_updates, edge_capacity, budget, alpha, beta, epsilon


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_smg_matches_reference(instance):
    counts, cumulative_updates, edge_capacity, budget, alpha, beta, epsilon = instance

    expected = reference_smg(counts, cumulative_updates, edge_capacity, budget, alpha, beta, epsilon)
    selection = smg(counts, cumulative_updates, edge_capacity, budget, alpha=alpha, beta=beta, epsilon=epsilon)

    assert selection == expected


@contextlib.contextmanager
def numpy_scoring_only():
    """Make SMG score groups with numpy from the first step, however few there are."""
    saved = scheduling._PYTHON_MAX_GROUPS
    scheduling._PYTHON_MAX_GROUPS = 0
    try:
        yield
    finally:
        scheduling._PYTHON_MAX_GROUPS = saved


@settings(max_examples=200, deadline=None)
@given(instances())
def test_smg_numpy_scoring_matches_reference(instance):
    counts, cumulative_updates, edge_capacity, budget, alpha, beta, epsilon = instance

    expected = reference_smg(counts, cumulative_updates, edge_capacity, budget, alpha, beta, epsilon)
    with numpy_scoring_only():
        selection = smg(counts, cumulative_updates, edge_capacity, budget, alpha=alpha, beta=beta, epsilon=epsilon)

    assert selection == expected


@settings(max_examples=200, deadline=None)
@given(instances())
def test_objective_matches_reference(instance):
    counts, cumulative_updates, edge_capacity, budget, alpha, beta, epsilon = instance
    selection = smg(counts, cumulative_updates, edge_capacity, budget, alpha=alpha, beta=beta, epsilon=epsilon)

    value = objective(
        selection, counts, cumulative_updates, alpha=alpha, beta=beta, epsilon=epsilon, edge_capacity=edge_capacity
    )
    expected = reference_objective(selection, counts, cumulative_updates, edge_capacity, alpha, beta, epsilon)

    assert value == pytest.approx(expected, rel=1e-12, abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(instances(max_edges=3, max_classes=4))
def test_exact_not_below_smg(instance):
    counts, cumulative_updates, edge_capacity, budget, alpha, beta, epsilon = instance
    selection = smg(counts, cumulative_updates, edge_capacity, budget, alpha=alpha, beta=beta, epsilon=epsilon)

    best, best_value = exact_best(
        counts, cumulative_updates, edge_capacity, budget, alpha=alpha, beta=beta, epsilon=epsilon
    )
    smg_value = objective(
        selection, counts, cumulative_updates, alpha=alpha, beta=beta, epsilon=epsilon, edge_capacity=edge_capacity
    )
    gap = optimality_gap(
        selection, counts, cumulative_updates, edge_capacity, budget, alpha=alpha, beta=beta, epsilon=epsilon
    )

    assert best_value >= smg_value - 1e-12
    assert 0.0 <= gap <= 1.0
    assert_feasible(best, counts, edge_capacity, budget)


@settings(max_examples=100, deadline=None)
@given(instances(max_edges=3, max_classes=3))
def test_exact_matches_brute_force(instance):
    counts, cumulative_updates, edge_capacity, budget, alpha, beta, epsilon = instance

    best, best_value = exact_best(
        counts, cumulative_updates, edge_capacity, budget, alpha=alpha, beta=beta, epsilon=epsilon
    )
    expected = brute_force_best(counts, cumulative_updates, edge_capacity, budget, alpha, beta, epsilon)
    recomputed = reference_objective(best, counts, cumulative_updates, edge_capacity, alpha, beta, epsilon)

    assert best_value == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert recomputed == pytest.approx(best_value, rel=1e-12, abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(instances(), st.integers(0, 2**32 - 1))
def test_all_policies_feasible(instance, seed):
    counts, cumulative_updates, edge_capacity, budget, alpha, beta, epsilon = instance

    for name, policy in SCHEDULERS.items():
        selection = policy(
            counts, cumulative_updates, edge_capacity, budget, alpha=alpha, beta=beta, epsilon=epsilon, seed=seed
        )
        assert_feasible(selection, counts, edge_capacity, budget)
        if name != "smg":
            reportable = sum(min(edge_capacity[k], sum(1 for n in row.values() if n > 0)) for k, row in counts.items())
            assert len(selection) == min(budget, reportable), name


# Hand-computed SMG cases ----------------------------------------------------------


def test_smg_first_round_then_balance():
    # Every B_c = 0 and α = β = 0.5. R̄(e1,a) = R̄(e2,a) = 1 and R̄(e3,b) = ln 11 / ln 101 = 0.519574.
    # Step 1: whichever class is picked gets π = 1 and the other π = 0, so both classes
    #   give the same V̄ = V(π=1) / (V(π=1) + V(π=0)) = 0.047775 and R̄ decides: (e1, a),
    #   tied with (e2, a) and taken by the smaller edge id.
    # Step 2: a second a keeps π = (1, 0): gain = 0.5·1 + 0.5·(2·0.047775 − 0.047775) = 0.523887.
    #   b gives π = (½, ½), V̄ = ½ each: gain = 0.5·0.519574 + 0.5·(1 − 0.047775) = 0.735900.
    # Step 3: only (e2, a) is left.
    counts = {"e1": {"a": 100}, "e2": {"a": 100}, "e3": {"b": 10}}
    cumulative_updates = {"a": 0, "b": 0}
    edge_capacity = {"e1": 1, "e2": 1, "e3": 1}
    one_a = FULL_SHARE_WEIGHT / (FULL_SHARE_WEIGHT + NO_UPDATES_WEIGHT)
    gain_second_a = 0.5 * 1.0 + 0.5 * (2 * one_a - one_a)
    gain_b = 0.5 * math.log(11) / math.log(101) + 0.5 * (1.0 - one_a)

    selection = smg(counts, cumulative_updates, edge_capacity, 3)

    assert gain_b > gain_second_a
    assert selection == [("e1", "a"), ("e3", "b"), ("e2", "a")]
    assert sufficient_only(counts, cumulative_updates, edge_capacity, 3) == [("e1", "a"), ("e2", "a"), ("e3", "b")]


def test_smg_first_pick_by_data_volume():
    # First round: every first pick has π = 1 for its class, so V̄ is the same for all and
    # the first pick is the pair with the most samples, whatever its class name.
    counts = {"e1": {"a": 3, "b": 40, "c": 7}, "e2": {"c": 39}}
    cumulative_updates = {"a": 0, "b": 0, "c": 0}
    edge_capacity = {"e1": 3, "e2": 1}

    selection = smg(counts, cumulative_updates, edge_capacity, 1)

    assert selection == [("e1", "b")]


def test_smg_balance_beats_volume():
    # B = (a: 500, b: 0), one edge with capacity 1, α = β = 0.5.
    # Pick a: R̄ = 1, B' = (501, 0), π = (1, 0): V̄_a = V(π=1) / (V(π=1) + V(π=0)) = 0.047775,
    #   gain = 0.5 + 0.5·0.047775 = 0.523887.
    # Pick b: R̄ = ln 3 / ln 201 = 0.207156, B' = (500, 1), π_b = 1/501:
    #   V_b = ln(1 + 1/(1/501 + 10⁻⁶)) = 6.2181, V_a = ln(1 + 1/(500/501 + 10⁻⁶)) = 0.6942,
    #   V̄_b = 0.8996, gain = 0.5·0.207156 + 0.5·0.8996 = 0.5534, so b wins.
    counts = {"e1": {"a": 200, "b": 2}}
    cumulative_updates = {"a": 500, "b": 0}
    edge_capacity = {"e1": 1}
    gain_a = 0.5 * 1.0 + 0.5 * FULL_SHARE_WEIGHT / (FULL_SHARE_WEIGHT + NO_UPDATES_WEIGHT)
    weight_b = math.log(1 + 1 / (1 / 501 + 1e-6))
    weight_a = math.log(1 + 1 / (500 / 501 + 1e-6))
    gain_b = 0.5 * math.log(3) / math.log(201) + 0.5 * weight_b / (weight_a + weight_b)

    assert gain_b > gain_a
    assert smg(counts, cumulative_updates, edge_capacity, 1) == [("e1", "b")]
    assert sufficient_only(counts, cumulative_updates, edge_capacity, 1) == [("e1", "a")]


def test_smg_budget_stop():
    counts = {f"e{k}": {"a": 5 + k, "b": 9 - k, "c": 4} for k in range(4)}
    cumulative_updates = {"a": 2, "b": 1, "c": 0}
    edge_capacity = {edge_id: 2 for edge_id in counts}

    full = smg(counts, cumulative_updates, edge_capacity, 8)
    for budget in range(9):
        selection = smg(counts, cumulative_updates, edge_capacity, budget)
        assert len(selection) == budget
        assert selection == full[:budget]


def test_smg_capacity_limit():
    counts = {"e1": {"a": 50, "b": 40, "c": 30}, "e2": {"a": 1}, "e3": {"b": 99}}
    cumulative_updates = {}
    edge_capacity = {"e1": 1, "e2": 2, "e3": 0}

    selection = smg(counts, cumulative_updates, edge_capacity, 10)

    per_edge = Counter(k for k, _ in selection)
    assert per_edge["e1"] == 1
    assert per_edge["e2"] == 1
    assert per_edge["e3"] == 0
    assert len(selection) == 2


def test_smg_skips_classes_without_samples():
    counts = {"e1": {"a": 0, "b": 6}, "e2": {"a": 4, "b": 0}, "e3": {"a": 0}}
    cumulative_updates = {"a": 0, "b": 0}
    edge_capacity = {"e1": 2, "e2": 2, "e3": 2}

    selection = smg(counts, cumulative_updates, edge_capacity, 10)

    assert sorted(selection) == [("e1", "b"), ("e2", "a")]


def test_unheld_class_counts_in_balance():
    # ghost has B = 0 and no samples anywhere. With it in the bank, picking a gives
    # π = (a: 1, ghost: 0) and V̄_a = V(π=1) / (V(π=1) + V(π=0)) = 0.047775, so
    # F = 0.5·1 + 0.5·0.047775. Without it, V̄_a = 1 and F = 0.5 + 0.5.
    counts = {"e1": {"a": 10}}
    selection = [("e1", "a")]

    with_ghost = objective(selection, counts, {"a": 0, "ghost": 0})
    without_ghost = objective(selection, counts, {"a": 0})

    assert with_ghost == pytest.approx(
        0.5 + 0.5 * FULL_SHARE_WEIGHT / (FULL_SHARE_WEIGHT + NO_UPDATES_WEIGHT), rel=1e-12
    )
    assert without_ghost == pytest.approx(1.0, rel=1e-12)
    for policy in SCHEDULERS.values():
        chosen = policy(counts, {"a": 0, "ghost": 0}, {"e1": 5}, 5, seed=1)
        assert all(c != "ghost" for _, c in chosen)


def test_class_only_in_counts_has_no_updates():
    counts = {"e1": {"a": 10, "b": 10}}

    explicit = objective([("e1", "a")], counts, {"a": 0, "b": 0})
    implicit = objective([("e1", "a")], counts, {})

    assert implicit == explicit


# Tie order ----------------------------------------------------------------------


def test_smg_tie_larger_samples_first():
    # α = 0 and every B_c = 0: both first picks give V̄ = V(π=1) / (V(π=1) + V(π=0)),
    # so the gains are equal and the larger N wins.
    counts = {"e1": {"a": 3, "b": 8}}

    selection = smg(counts, {}, {"e1": 1}, 1, alpha=0.0, beta=1.0)

    assert selection == [("e1", "b")]


def test_smg_tie_smaller_edge_id_first():
    counts = {"e2": {"a": 5}, "e1": {"a": 5}, "e10": {"a": 5}}

    selection = smg(counts, {}, {"e1": 1, "e2": 1, "e10": 1}, 1)

    assert selection == [("e1", "a")]


def test_smg_tie_smaller_class_first():
    counts = {"e1": {"b": 5, "a": 5}}

    selection = smg(counts, {}, {"e1": 1}, 1)

    assert selection == [("e1", "a")]


def test_smg_stops_without_positive_gain():
    counts = {"e1": {"a": 5, "b": 2}}

    assert smg(counts, {}, {"e1": 2}, 2, alpha=0.0, beta=0.0) == []


# Edge cases and validation ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_policy_empty_results(name):
    policy = SCHEDULERS[name]

    assert policy({}, {"a": 3}, {}, 5) == []
    assert policy({"e1": {"a": 4}}, {}, {"e1": 1}, 0) == []
    assert policy({"e1": {"a": 0, "b": 0}, "e2": {}}, {}, {"e1": 2, "e2": 1}, 5) == []
    assert policy({"e1": {"a": 4}}, {}, {"e1": 0}, 5) == []


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_policy_rejects_bad_inputs(name):
    policy = SCHEDULERS[name]
    counts = {"e1": {"a": 4}}

    with pytest.raises(ValueError, match="e2"):
        policy({"e1": {"a": 4}, "e2": {"a": 1}}, {}, {"e1": 1}, 1)
    with pytest.raises(ValueError, match=r"counts\['e1'\]\['a'\].*-1"):
        policy({"e1": {"a": -1}}, {}, {"e1": 1}, 1)
    with pytest.raises(ValueError, match=r"cumulative_updates\['a'\].*-2"):
        policy(counts, {"a": -2}, {"e1": 1}, 1)
    with pytest.raises(ValueError, match=r"edge_capacity\['e1'\].*-3"):
        policy(counts, {}, {"e1": -3}, 1)
    with pytest.raises(ValueError, match="comm_budget.*-4"):
        policy(counts, {}, {"e1": 1}, -4)
    with pytest.raises(TypeError, match=r"counts\['e1'\]\['a'\].*2.5"):
        policy({"e1": {"a": 2.5}}, {}, {"e1": 1}, 1)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("alpha", -0.1), ("beta", float("nan")), ("epsilon", 0.0), ("epsilon", float("inf"))],
)
def test_smg_rejects_bad_weights(keyword, value):
    with pytest.raises(ValueError, match=keyword):
        smg({"e1": {"a": 4}}, {}, {"e1": 1}, 1, **{keyword: value})


def test_policies_share_signature():
    counts = {"e1": {"a": 4, "b": 2}, "e2": {"b": 9}}
    arguments = (counts, {"a": 1, "b": 0}, {"e1": 1, "e2": 1}, 2)

    for policy in SCHEDULERS.values():
        selection = policy(*arguments, alpha=0.2, beta=0.8, epsilon=1e-4, seed=3)
        assert len(selection) == 2


def test_objective_rejects_bad_selection():
    counts = {"e1": {"a": 4, "b": 0}}

    with pytest.raises(ValueError, match="twice"):
        objective([("e1", "a"), ("e1", "a")], counts, {})
    with pytest.raises(ValueError, match="not a candidate"):
        objective([("e1", "b")], counts, {})
    with pytest.raises(ValueError, match="not a candidate"):
        objective([("e9", "a")], counts, {})


# Baselines ----------------------------------------------------------------------


def plain_two_stage(counts, edge_capacity, budget, edge_rank, server_rank):
    reported = []
    for k in sorted(counts):
        available = [c for c, n in counts[k].items() if n > 0]
        available.sort(key=lambda c: edge_rank(k, c))
        reported.extend((k, c) for c in available[: edge_capacity[k]])
    reported.sort(key=lambda pair: server_rank(*pair))
    return reported[:budget]


@settings(max_examples=150, deadline=None)
@given(instances())
def test_sufficient_only_matches_plain(instance):
    counts, cumulative_updates, edge_capacity, budget, *_ = instance
    expected = plain_two_stage(
        counts,
        edge_capacity,
        budget,
        edge_rank=lambda k, c: (-counts[k][c], c),
        server_rank=lambda k, c: (-counts[k][c], k, c),
    )

    assert sufficient_only(counts, cumulative_updates, edge_capacity, budget) == expected


@settings(max_examples=150, deadline=None)
@given(instances())
def test_balanced_only_matches_plain(instance):
    counts, cumulative_updates, edge_capacity, budget, *_ = instance
    expected = plain_two_stage(
        counts,
        edge_capacity,
        budget,
        edge_rank=lambda k, c: (cumulative_updates.get(c, 0), c),
        server_rank=lambda k, c: (cumulative_updates.get(c, 0), k, c),
    )

    assert balanced_only(counts, cumulative_updates, edge_capacity, budget) == expected


def test_balanced_only_ignores_this_round():
    # Both edges report a (B = 0) before b (B = 3); picks within the round do not raise B_a.
    counts = {"e1": {"a": 1, "b": 50}, "e2": {"a": 1, "b": 50}}

    selection = balanced_only(counts, {"a": 0, "b": 3}, {"e1": 1, "e2": 1}, 2)

    assert selection == [("e1", "a"), ("e2", "a")]


def test_random_selection_seeded():
    counts = {f"e{k}": {c: 1 + (k * 7 + i) % 5 for i, c in enumerate(CLASS_NAMES)} for k in range(4)}
    edge_capacity = {edge_id: 2 for edge_id in counts}

    first = random_selection(counts, {}, edge_capacity, 5, seed=11)
    again = random_selection(counts, {}, edge_capacity, 5, seed=11)
    others = {tuple(random_selection(counts, {}, edge_capacity, 5, seed=seed)) for seed in range(20)}

    assert first == again
    assert len(others) > 10


def test_random_selection_uniform_per_edge():
    # One edge with capacity 1 and budget 1: each of its 4 classes should come up in
    # about a quarter of the seeds. 4,000 draws put 1,000 ± 27 (one σ) in each bin.
    counts = {"e1": {c: 5 for c in CLASS_NAMES[:4]}}
    draws = Counter(random_selection(counts, {}, {"e1": 1}, 1, seed=seed)[0][1] for seed in range(4000))

    assert set(draws) == set(CLASS_NAMES[:4])
    for class_name, hits in draws.items():
        assert abs(hits - 1000) < 150, (class_name, hits)


# Exact search ---------------------------------------------------------------------


def test_exact_rejects_large_instance():
    # 5 edges × 5 classes with capacity 5 and budget 25: every subset of the 25 pairs.
    counts = {f"e{k}": {c: 3 for c in CLASS_NAMES} for k in range(5)}
    edge_capacity = {edge_id: 5 for edge_id in counts}

    with pytest.raises(ValueError, match=str(2**25)):
        exact_best(counts, {}, edge_capacity, 25)


def test_count_feasible_sets_by_enumeration():
    counts = {"e1": {"a": 1, "b": 2, "c": 3}, "e2": {"a": 4, "b": 5}, "e3": {"c": 0}}
    edge_capacity = {"e1": 2, "e2": 1, "e3": 1}
    problem = SchedulingProblem.from_inputs(counts, {}, edge_capacity)
    pairs = candidate_pairs(counts, edge_capacity)

    for budget in range(5):
        feasible = 0
        for size in range(budget + 1):
            for subset in itertools.combinations(pairs, size):
                per_edge = Counter(k for k, _ in subset)
                feasible += all(per_edge[k] <= edge_capacity[k] for k in per_edge)
        assert count_feasible_sets(problem, budget) == feasible
        if feasible > 3:
            partial = count_feasible_sets(problem, budget, stop_above=3)
            assert 3 < partial <= feasible


def test_optimality_gap_of_optimum_is_zero():
    counts = {"e1": {"a": 9, "b": 3}, "e2": {"a": 2, "b": 8}}
    cumulative_updates = {"a": 4, "b": 1}
    edge_capacity = {"e1": 1, "e2": 1}
    best, best_value = exact_best(counts, cumulative_updates, edge_capacity, 2)

    assert optimality_gap(best, counts, cumulative_updates, edge_capacity, 2) == 0.0
    assert optimality_gap([], counts, cumulative_updates, edge_capacity, 2) == 1.0
    assert best_value == pytest.approx(
        reference_objective(best, counts, cumulative_updates, edge_capacity, 0.5, 0.5, 1e-6), rel=1e-12
    )


def test_optimality_gap_rejects_infeasible():
    counts = {"e1": {"a": 9, "b": 3}, "e2": {"a": 2}}
    edge_capacity = {"e1": 1, "e2": 1}

    with pytest.raises(ValueError, match="capacity"):
        optimality_gap([("e1", "a"), ("e1", "b")], counts, {}, edge_capacity, 3)
    with pytest.raises(ValueError, match="comm_budget"):
        optimality_gap([("e1", "a"), ("e2", "a")], counts, {}, edge_capacity, 1)


def test_optimality_gap_zero_when_nothing_to_gain():
    assert optimality_gap([], {"e1": {"a": 0}}, {"a": 2}, {"e1": 1}, 3) == 0.0


@pytest.mark.parametrize("seed", [7, 8])
def test_smg_mid_size_matches_reference(seed):
    # 30 edges, 20 classes, 5 held per edge, capacity 2: many groups, edges filling up
    # and classes running out of edges, all checked against the plain definition.
    rng = np.random.default_rng(seed)
    counts = {
        f"edge{k:02d}": {f"class{c:02d}": int(rng.integers(1, 40)) for c in rng.choice(20, 5, replace=False)}
        for k in range(30)
    }
    cumulative_updates = {f"class{c:02d}": int(rng.integers(0, 12)) for c in range(22)}
    edge_capacity = {edge_id: 2 for edge_id in counts}

    selection = smg(counts, cumulative_updates, edge_capacity, 45)
    expected = reference_smg(counts, cumulative_updates, edge_capacity, 45, 0.5, 0.5, 1e-6)

    assert selection == expected
    assert_feasible(selection, counts, edge_capacity, 45)


def test_smg_many_groups_matches_reference():
    # 40 classes with distinct B_c make 40 class groups from the first step, so SMG
    # switches to numpy scoring on its own.
    rng = np.random.default_rng(3)
    counts = {
        f"edge{k:02d}": {f"class{c:02d}": int(rng.integers(1, 30)) for c in rng.choice(40, 4, replace=False)}
        for k in range(25)
    }
    cumulative_updates = {f"class{c:02d}": c for c in range(40)}
    edge_capacity = {edge_id: 2 for edge_id in counts}
    assert len(set(cumulative_updates.values())) > scheduling._PYTHON_MAX_GROUPS

    selection = smg(counts, cumulative_updates, edge_capacity, 40)
    expected = reference_smg(counts, cumulative_updates, edge_capacity, 40, 0.5, 0.5, 1e-6)

    assert selection == expected
