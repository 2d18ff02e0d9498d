"""Tests of modiad.metrics against hand-derived values and plain reference code.

The reference implementations below are written independently of the module: a
breadth-first flood fill for 8-connected regions, a loop over every distinct score for
the PRO curve, and a pair count for the AUROC. They are slow but obviously correct on
small inputs.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import roc_auc_score

from modiad import metrics
from modiad.metrics import (
    aupro,
    aupro_at,
    aupro_key,
    class_report,
    format_table,
    image_auroc,
    mean_report,
    pixel_auroc,
)

STANDARD_LIMITS = (0.3, 0.1, 0.05, 0.01)


# ---------------------------------------------------------------------------
# Reference implementations
# ---------------------------------------------------------------------------


def reference_regions(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Return the 8-connected components of the non-zero pixels, by flood fill."""
    height, width = mask.shape
    seen = np.zeros(mask.shape, dtype=bool)
    regions = []
    for row in range(height):
        for col in range(width):
            if mask[row, col] == 0 or seen[row, col]:
                continue
            region = []
            queue = deque([(row, col)])
            seen[row, col] = True
            while queue:
                r, c = queue.popleft()
                region.append((r, c))
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        nr, nc = r + dr, c + dc
                        if 0 <= nr < height and 0 <= nc < width and mask[nr, nc] != 0 and not seen[nr, nc]:
                            seen[nr, nc] = True
                            queue.append((nr, nc))
            regions.append(region)
    return regions


def reference_pro_curve(maps, masks) -> list[tuple[float, float]]:
    """Return the PRO curve with one point per distinct score, plus (0, 0) and (1, 1)."""
    negative_scores = []
    region_scores = []
    for anomaly_map, mask in zip(maps, masks):
        anomaly_map = np.asarray(anomaly_map, dtype=np.float64)
        mask = np.asarray(mask)
        negative_scores.extend(anomaly_map[mask == 0].tolist())
        for region in reference_regions(mask):
            region_scores.append([anomaly_map[r, c] for r, c in region])

    all_scores = set(negative_scores)
    for scores in region_scores:
        all_scores.update(scores)

    points = [(0.0, 0.0)]
    for threshold in sorted(all_scores, reverse=True):
        fpr = sum(score >= threshold for score in negative_scores) / len(negative_scores)
        overlaps = [sum(score >= threshold for score in scores) / len(scores) for scores in region_scores]
        points.append((fpr, sum(overlaps) / len(overlaps)))
    points.append((1.0, 1.0))
    return points


def reference_area(points: list[tuple[float, float]], limit: float) -> float:
    """Integrate a curve by trapezoids up to ``limit``, interpolating at the limit."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_limit) / 2
    return area / limit


def reference_aupro(maps, masks, limit: float) -> float:
    return reference_area(reference_pro_curve(maps, masks), limit)


def reference_auroc(scores, labels) -> float:
    """Count every (anomalous, normal) pair: a win is 1, a tie 1/2."""
    positives = [s for s, y in zip(scores, labels) if y]
    negatives = [s for s, y in zip(scores, labels) if not y]
    doubled = sum(2 * (p > n) + (p == n) for p in positives for n in negatives)
    return doubled / (2 * len(positives) * len(negatives))


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------


@st.composite
def image_sets(draw, max_images: int = 4, max_side: int = 6, integer_scores: bool = True):
    """Draw maps and masks of mixed sizes with at least one defect and one normal pixel."""
    n_images = draw(st.integers(1, max_images))
    if integer_scores:
        elements = st.integers(-4, 4).map(float)
    else:
        elements = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)

    maps, masks = [], []
    for _ in range(n_images):
        shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
        maps.append(draw(arrays(np.float64, shape, elements=elements)))
        masks.append(draw(arrays(np.bool_, shape)))

    n_defect = sum(int(mask.sum()) for mask in masks)
    n_pixels = sum(mask.size for mask in masks)
    assume(0 < n_defect < n_pixels)
    return maps, masks


# ---------------------------------------------------------------------------
# Hand-derived AUPRO values
# ---------------------------------------------------------------------------


def test_aupro_single_tiny_image():
    # Scores [0.1, 0.4, 0.35, 0.8], mask [0, 0, 1, 1]: one region {0.35, 0.8}, negatives
    # {0.1, 0.4}. Thresholds 0.8, 0.4, 0.35, 0.1 give (FPR, PRO) = (0, 1/2), (1/2, 1/2),
    # (1/2, 1), (1, 1). Up to 0.3 the PRO is 1/2, so AUPRO@0.3 = 0.5 and AUPRO@0.5 = 0.5.
    # Up to 1: 0.5 * 1/2 + 0.5 * 1 = 0.75, divided by 1.
    maps = [np.array([[0.1, 0.4, 0.35, 0.8]])]
    masks = [np.array([[0, 0, 1, 1]])]

    result = aupro_at(maps, masks, limits=(0.3, 0.5, 1.0))

    assert result[0.3] == pytest.approx(0.5)
    assert result[0.5] == pytest.approx(0.5)
    assert result[1.0] == pytest.approx(0.75)


def test_aupro_diagonal_touch_is_one_region():
    # Defects at (0, 0), (1, 1), (1, 2). With 8-connectivity this is one region of 3
    # pixels; with 4-connectivity it would be {(0, 0)} and {(1, 1), (1, 2)}.
    # The six normal pixels all score 0.5, the defect at (0, 0) scores 0.9 and the other
    # two score 0.1. At t = 0.9 the FPR is 0 and the PRO is 1/3 (one region, 1 of 3
    # pixels); with two regions it would be (1 + 0) / 2 = 1/2. The PRO stays there until
    # the FPR reaches 1, so AUPRO@0.3 = 1/3 (and 1/2 with 4-connectivity).
    anomaly_map = np.full((3, 3), 0.5)
    mask = np.zeros((3, 3), dtype=np.uint8)
    for (row, col), score in {(0, 0): 0.9, (1, 1): 0.1, (1, 2): 0.1}.items():
        anomaly_map[row, col] = score
        mask[row, col] = 1

    assert aupro([anomaly_map], [mask], fpr_limit=0.3) == pytest.approx(1 / 3)


def test_aupro_good_image_high_scores_lower_it():
    # Adding a good image [0.9, 0.0] to the single tiny image above gives 4 negatives
    # {0.1, 0.4, 0.9, 0.0}. Now t = 0.9 gives (1/4, 0), then 0.8 gives (1/4, 1/2) and
    # 0.4 gives (1/2, 1/2). Up to 0.3 the area is 0.25 * 0 + 0.05 * 1/2 = 0.025, so
    # AUPRO@0.3 = 0.025 / 0.3 = 1/12, down from 0.5 without the good image.
    defect_map = np.array([[0.1, 0.4, 0.35, 0.8]])
    defect_mask = np.array([[0, 0, 1, 1]])
    good_map = np.array([[0.9, 0.0]])
    good_mask = np.zeros((1, 2), dtype=bool)

    without_good = aupro([defect_map], [defect_mask])
    with_good = aupro([defect_map, good_map], [defect_mask, good_mask])

    assert without_good == pytest.approx(0.5)
    assert with_good == pytest.approx(1 / 12)


def test_aupro_ties_at_top_score_merged():
    # Scores [0.9, 0.9, 0.2, 0.5] and mask [1, 0, 1, 0]: two regions of one pixel each,
    # negatives {0.9, 0.5}. The top score 0.9 is shared by a defect and a normal pixel,
    # so both enter at once: the curve goes (0, 0) -> (1/2, 1/2) -> (1, 1/2) -> (1, 1).
    # At FPR 0.3 the PRO is 0.3, so the area is 0.3 * 0.3 / 2 = 0.045 and AUPRO@0.3 =
    # 0.15. Breaking the tie defect-first would give 0.5, normal-first 0.
    maps = [np.array([[0.9, 0.9, 0.2, 0.5]])]
    masks = [np.array([[1, 0, 1, 0]])]

    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.15)


@pytest.mark.parametrize("limit", STANDARD_LIMITS)
def test_aupro_constant_map_is_half_limit(limit):
    # One distinct score: the curve is the straight line (0, 0) -> (1, 1), whose area up
    # to L is L**2 / 2, so the normalised AUPRO is L / 2.
    maps = np.full((3, 4, 5), 7.25)
    masks = np.zeros((3, 4, 5), dtype=bool)
    masks[0, 1:3, 1:3] = True
    masks[2, 0, 4] = True

    assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(limit / 2)


def test_aupro_each_standard_limit():
    # 20 normal pixels score 0..19, so each one adds 0.05 to the FPR. One region of 4
    # pixels scores [19, 18.5, 17, 5.5]. The curve runs:
    #   t=19:   (0.05, 0.25), entered diagonally from (0, 0) because of the tie at 19
    #   t=18.5: (0.05, 0.50)
    #   t=18:   (0.10, 0.50)
    #   t=17:   (0.15, 0.75), diagonally because of the tie at 17
    #   t=16..11: PRO stays 0.75 up to FPR 0.45
    # @0.01: PRO(0.01) = 0.05, area 0.01 * 0.05 / 2 = 0.00025 -> 0.025
    # @0.05: area 0.05 * 0.25 / 2 = 0.00625 -> 0.125
    # @0.1:  0.00625 + 0.05 * 0.5 = 0.03125 -> 0.3125
    # @0.3:  0.03125 + 0.05 * (0.5 + 0.75) / 2 + 0.15 * 0.75 = 0.175 -> 0.175 / 0.3
    scores = np.concatenate([np.arange(20.0), [19.0, 18.5, 17.0, 5.5]])[None, :]
    mask = np.concatenate([np.zeros(20), np.ones(4)])[None, :]
    expected = {0.3: 0.175 / 0.3, 0.1: 0.3125, 0.05: 0.125, 0.01: 0.025}

    result = aupro_at([scores], [mask], limits=STANDARD_LIMITS)

    assert set(result) == set(STANDARD_LIMITS)
    for limit in STANDARD_LIMITS:
        assert result[limit] == pytest.approx(expected[limit], abs=1e-12)
        assert aupro([scores], [mask], fpr_limit=limit) == pytest.approx(expected[limit], abs=1e-12)


def test_aupro_perfect_separation_is_one():
    # Every defect pixel outscores every normal pixel: the PRO is 1 from FPR 0 on.
    anomaly_map = np.zeros((6, 6))
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:3, 1:4] = True
    mask[4:, 5] = True
    anomaly_map[mask] = np.linspace(1, 2, int(mask.sum()))

    assert aupro([anomaly_map], [mask], fpr_limit=0.01) == pytest.approx(1.0)


def test_aupro_regions_weigh_equally():
    # A 1-pixel region that is found and a 9-pixel region that is missed give PRO 1/2
    # at low FPR, not 1/10 as a pixel-weighted overlap would.
    anomaly_map = np.zeros((8, 8))
    mask = np.zeros((8, 8), dtype=bool)
    mask[0, 0] = True
    anomaly_map[0, 0] = 5.0
    mask[4:7, 4:7] = True
    anomaly_map[4:7, 4:7] = -1.0

    assert aupro([anomaly_map], [mask], fpr_limit=0.3) == pytest.approx(0.5)


# ---------------------------------------------------------------------------
# Input forms
# ---------------------------------------------------------------------------


def test_aupro_stack_equals_list_and_mask_encodings():
    rng = np.random.default_rng(3)
    maps = rng.normal(size=(4, 9, 7)).astype(np.float32)
    masks = rng.random((4, 9, 7)) < 0.2

    from_list = aupro_at(list(maps), list(masks))
    from_stack = aupro_at(maps, masks)
    from_255 = aupro_at(maps, masks.astype(np.uint8) * 255)
    from_float64 = aupro_at(maps.astype(np.float64), masks)

    assert from_stack == from_list
    assert from_255 == from_list
    for limit in STANDARD_LIMITS:
        assert from_float64[limit] == pytest.approx(from_list[limit], abs=1e-12)


def test_aupro_mixed_sizes_and_integer_scores():
    rng = np.random.default_rng(4)
    shapes = [(5, 8), (3, 3), (7, 2)]
    maps = [rng.integers(0, 255, size=shape, dtype=np.uint8) for shape in shapes]
    masks = [rng.random(shape) < 0.3 for shape in shapes]

    result = aupro_at(maps, masks, limits=(0.3, 0.05))

    for limit in (0.3, 0.05):
        assert result[limit] == pytest.approx(reference_aupro(maps, masks, limit), abs=1e-12)


@pytest.mark.parametrize("block_elements", [1, 2, 3, 7])
def test_aupro_small_blocks_match_reference(monkeypatch, block_elements):
    # Tiny scan blocks put runs of tied scores across block boundaries.
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", block_elements)
    rng = np.random.default_rng(block_elements)
    maps = rng.integers(0, 4, size=(3, 5, 6)).astype(np.float64)
    masks = rng.random((3, 5, 6)) < 0.3

    result = aupro_at(maps, masks, limits=(1.0, *STANDARD_LIMITS))

    for limit, value in result.items():
        assert value == pytest.approx(reference_aupro(maps, masks, limit), abs=1e-12)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(data=image_sets(), limit=st.floats(0.001, 1.0))
def test_aupro_matches_reference(data, limit):
    maps, masks = data

    assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(reference_aupro(maps, masks, limit), abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(data=image_sets(integer_scores=False))
def test_aupro_within_unit_interval(data):
    maps, masks = data

    for value in aupro_at(maps, masks, limits=(1.0, *STANDARD_LIMITS)).values():
        assert 0.0 <= value <= 1.0


@settings(max_examples=100, deadline=None)
@given(data=image_sets())
def test_aupro_invariant_to_increasing_transform(data):
    maps, masks = data
    # Both transforms are exact on small integers, so they keep every tie and every order.
    cubed = [m**3 + m for m in maps]
    all_scores = np.concatenate([m.ravel() for m in maps])
    ranks = [np.searchsorted(np.unique(all_scores), m).astype(np.float64) for m in maps]

    original = aupro_at(maps, masks)
    for transformed in (cubed, ranks):
        result = aupro_at(transformed, masks)
        for limit in STANDARD_LIMITS:
            assert result[limit] == pytest.approx(original[limit], abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(data=image_sets(), permutation_seed=st.integers(0, 2**32 - 1))
def test_aupro_invariant_to_image_order(data, permutation_seed):
    maps, masks = data
    order = np.random.default_rng(permutation_seed).permutation(len(maps))

    original = aupro_at(maps, masks)
    permuted = aupro_at([maps[i] for i in order], [masks[i] for i in order])

    for limit in STANDARD_LIMITS:
        assert permuted[limit] == pytest.approx(original[limit], abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(data=image_sets(integer_scores=False))
def test_pixel_auroc_matches_sklearn(data):
    maps, masks = data
    flat_scores = np.concatenate([m.ravel() for m in maps])
    flat_labels = np.concatenate([m.ravel() for m in masks])

    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(flat_labels, flat_scores), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(data=image_sets())
def test_pixel_auroc_with_ties_matches_pair_count(data):
    maps, masks = data
    flat_scores = np.concatenate([m.ravel() for m in maps]).tolist()
    flat_labels = np.concatenate([m.ravel() for m in masks]).tolist()

    assert pixel_auroc(maps, masks) == pytest.approx(reference_auroc(flat_scores, flat_labels), abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(-5, 5), st.booleans()), min_size=2, max_size=60),
    scale=st.sampled_from([1.0, 0.1, 1e-300]),
)
def test_image_auroc_matches_sklearn(pairs, scale):
    scores = np.array([score * scale for score, _ in pairs])
    labels = np.array([int(label) for _, label in pairs])
    assume(0 < labels.sum() < labels.size)

    result = image_auroc(scores, labels)

    assert result == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result == pytest.approx(reference_auroc(scores.tolist(), labels.tolist()), abs=1e-12)


def test_pixel_auroc_majority_defect_pixels():
    # More defect than normal pixels takes the other search direction.
    rng = np.random.default_rng(5)
    maps = rng.integers(0, 6, size=(2, 10, 10)).astype(np.float32)
    masks = rng.random((2, 10, 10)) < 0.8

    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


# ---------------------------------------------------------------------------
# Undefined and invalid inputs
# ---------------------------------------------------------------------------


def test_aupro_without_defect_region_raises():
    maps = np.ones((2, 3, 3))
    masks = np.zeros((2, 3, 3), dtype=bool)

    with pytest.raises(ValueError, match="none of the 2 ground-truth masks contains a defect region"):
        aupro(maps, masks)


def test_aupro_all_defect_pixels_raises():
    with pytest.raises(ValueError, match="all 4 pixels are defect pixels"):
        aupro([np.ones((2, 2))], [np.ones((2, 2), dtype=bool)])


def test_auroc_single_label_raises():
    with pytest.raises(ValueError, match="all 3 images have label 0"):
        image_auroc([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError, match="all 2 images have label 1"):
        image_auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="all 6 pixels are defect-free"):
        pixel_auroc([np.ones((2, 3))], [np.zeros((2, 3))])
    with pytest.raises(ValueError, match="all 6 pixels are defective"):
        pixel_auroc([np.ones((2, 3))], [np.ones((2, 3))])


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_map_names_index(bad_value):
    maps = [np.zeros((3, 3)), np.zeros((3, 3))]
    maps[1][2, 0] = bad_value
    masks = [np.eye(3), np.eye(3)]

    for metric in (aupro, aupro_at, pixel_auroc):
        with pytest.raises(ValueError, match="anomaly map 1 contains NaN or infinite scores"):
            metric(maps, masks)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_image_score_names_index(bad_value):
    with pytest.raises(ValueError, match=r"image score 2 is (nan|inf)"):
        image_auroc([0.1, 0.5, bad_value, 0.3], [0, 1, 1, 0])


def test_shape_mismatch_names_index_and_shapes():
    maps = [np.zeros((3, 3)), np.zeros((2, 3))]
    masks = [np.eye(3), np.ones((3, 2))]

    for metric in (aupro, pixel_auroc):
        with pytest.raises(ValueError, match=r"anomaly map 1 has shape \(2, 3\) but its ground-truth mask has shape \(3, 2\)"):
            metric(maps, masks)


def test_empty_input_raises():
    with pytest.raises(ValueError, match="no anomaly maps given"):
        aupro([], [])
    with pytest.raises(ValueError, match="no anomaly maps given"):
        pixel_auroc([], [])
    with pytest.raises(ValueError, match="no image scores given"):
        image_auroc([], [])
    with pytest.raises(ValueError, match="all anomaly maps are empty"):
        aupro([np.zeros((0, 4))], [np.zeros((0, 4))])


def test_count_mismatches_raise():
    with pytest.raises(ValueError, match="got 2 anomaly maps but 1 ground-truth masks"):
        aupro([np.zeros((2, 2))] * 2, [np.eye(2)])
    with pytest.raises(ValueError, match="got 3 image scores but 2 labels"):
        image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="got 3 image scores but 2 anomaly maps"):
        class_report([0.1, 0.2, 0.3], [0, 1, 1], [np.zeros((2, 2))] * 2, [np.eye(2)] * 2)


def test_invalid_labels_and_shapes_raise():
    with pytest.raises(ValueError, match="image label 1 is 2"):
        image_auroc([0.1, 0.2, 0.3], [0, 2, 1])
    with pytest.raises(ValueError, match="must be 1-D"):
        image_auroc([[0.1, 0.2]], [[0, 1]])
    with pytest.raises(ValueError, match="must be an N×H×W array"):
        aupro(np.zeros((4, 4)), np.eye(4))
    with pytest.raises(ValueError, match="anomaly map 0 has shape"):
        aupro([np.zeros(4)], [np.zeros(4)])


@pytest.mark.parametrize("bad_limit", [0.0, -0.1, 1.5, float("nan")])
def test_invalid_limit_raises(bad_limit):
    maps = [np.arange(9.0).reshape(3, 3)]
    masks = [np.eye(3)]

    with pytest.raises(ValueError, match="is outside \\(0, 1\\]"):
        aupro(maps, masks, fpr_limit=bad_limit)
    with pytest.raises(ValueError, match="is outside \\(0, 1\\]"):
        aupro_at(maps, masks, limits=(0.3, bad_limit))


def test_bare_number_as_limits_raises():
    with pytest.raises(TypeError, match="Wrap it in a tuple"):
        aupro_at([np.arange(9.0).reshape(3, 3)], [np.eye(3)], limits=0.3)


# ---------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------


def _random_class(seed: int):
    rng = np.random.default_rng(seed)
    masks = rng.random((6, 8, 8)) < 0.15
    masks[:2] = False
    maps = rng.normal(size=(6, 8, 8)) + 1.5 * masks
    labels = masks.reshape(6, -1).any(axis=1).astype(int)
    scores = maps.reshape(6, -1).max(axis=1)
    return scores, labels, maps, masks


def test_class_report_matches_single_metrics():
    scores, labels, maps, masks = _random_class(7)

    report = class_report(scores, labels, maps, masks)

    assert list(report) == ["i_auroc", "p_auroc", "aupro@0.3", "aupro@0.1", "aupro@0.05", "aupro@0.01"]
    assert report["i_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert report["p_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    for limit in STANDARD_LIMITS:
        assert report[aupro_key(limit)] == pytest.approx(reference_aupro(maps, masks, limit), abs=1e-9)


def test_mean_report_averages_each_key():
    per_class = {f"class_{seed}": class_report(*_random_class(seed)) for seed in range(3)}

    mean = mean_report(per_class)

    assert list(mean) == list(per_class["class_0"])
    for key in mean:
        assert mean[key] == pytest.approx(np.mean([report[key] for report in per_class.values()]), abs=1e-15)


def test_mean_report_rejects_mismatched_or_empty():
    with pytest.raises(ValueError, match="no class reports to average"):
        mean_report({})
    with pytest.raises(ValueError, match="class 'cable' reports keys"):
        mean_report({"bagel": {"i_auroc": 0.9, "p_auroc": 0.8}, "cable": {"i_auroc": 0.7}})


def test_format_table_rows_and_widths():
    per_class = {
        "bagel": {"i_auroc": 0.98765, "aupro@0.1": 0.5, "aupro@0.05": 0.0004},
        "cable_gland": {"i_auroc": 0.1234, "aupro@0.1": 1.0, "aupro@0.05": 0.25},
    }
    mean = mean_report(per_class)

    table = format_table(per_class, mean)
    lines = table.split("\n")

    assert len({len(line) for line in lines}) == 1
    assert lines[0].split() == ["class", "i_auroc", "aupro@0.1", "aupro@0.05"]
    assert set(lines[1]) == {"-"}
    assert set(lines[-2]) == {"-"}
    body = [line.split() for line in lines[2:-2]] + [lines[-1].split()]
    assert [row[0] for row in body] == ["bagel", "cable_gland", "mean"]
    for row, report in zip(body, [*per_class.values(), mean]):
        values = [report[key] for key in ("i_auroc", "aupro@0.1", "aupro@0.05")]
        assert row[1:] == [f"{value:.3f}" for value in values]
        for cell, value in zip(row[1:], values):
            assert abs(float(cell) - value) <= 0.0005


def test_format_table_custom_keys_and_missing_key():
    per_class = {"foam": {"p_auroc": 0.9, "aupro@0.3": 0.8}}

    table = format_table(per_class, per_class["foam"], keys=("p_auroc",))

    assert table.split("\n")[0].split() == ["class", "p_auroc"]
    with pytest.raises(ValueError, match="row 'foam' has no value for \\['aupro@0.01'\\]"):
        format_table(per_class, per_class["foam"], keys=("p_auroc", "aupro@0.01"))
