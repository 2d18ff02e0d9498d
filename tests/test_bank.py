"""Model bank persistence and class-wise aggregation."""

import numpy as np
import pytest

from cloud.aggregation import aggregate_class
from cloud.bank import BANK_FILE_NAME, ModelBank
from modiad.errors import ConfigError
from modiad.mapper import expected_shapes


def _bank() -> ModelBank:
    bank = ModelBank(dim_2d=6, dim_3d=4, seed=7, feature_identity="test-features")
    bank.ensure_class("disc")
    bank.ensure_class("ring")
    return bank


def test_new_class_shapes_and_counts():
    bank = _bank()
    model = bank.classes["disc"]
    assert model.updates == 0
    assert model.version == 0
    assert {name: array.shape for name, array in model.state.items()} == expected_shapes(6, 4)


def test_initial_weights_depend_on_seed_and_class_only():
    first, second = _bank(), _bank()
    for name, array in first.classes["disc"].state.items():
        assert np.array_equal(array, second.classes["disc"].state[name])
    assert not np.array_equal(first.classes["disc"].state["to_3d.layers.0.weight"],
                              first.classes["ring"].state["to_3d.layers.0.weight"])


def test_save_and_load_round_trip(tmp_path):
    bank = _bank()
    bank.classes["ring"].version = 3
    bank.classes["ring"].updates = 5
    bank.completed_round = 4
    bank.save(tmp_path)

    loaded = ModelBank.load(tmp_path)

    assert loaded is not None
    assert loaded.completed_round == 4
    assert loaded.cumulative_updates() == {"disc": 0, "ring": 5}
    assert loaded.classes["ring"].version == 3
    for name, array in bank.classes["ring"].state.items():
        assert np.array_equal(loaded.classes["ring"].state[name], array)
    assert not list(tmp_path.glob("*.tmp"))


def test_load_of_missing_bank_returns_none(tmp_path):
    assert ModelBank.load(tmp_path) is None


def test_corrupt_bank_raises_config_error(tmp_path):
    (tmp_path / BANK_FILE_NAME).write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(ConfigError, match="unreadable"):
        ModelBank.load(tmp_path)


def test_aggregate_class_equals_stacked_mean():
    rng = np.random.default_rng(1)
    updates = [{"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
               for _ in range(3)]

    result = aggregate_class(updates)

    for name in ("w", "b"):
        reference = np.stack([update[name].astype(np.float64) for update in updates]).mean(axis=0)
        assert result[name].dtype == np.float32
        assert np.allclose(result[name], reference, atol=1e-7)


def test_aggregate_of_one_update_is_that_update():
    update = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert np.array_equal(aggregate_class([update])["w"], update["w"])


def test_aggregate_without_updates_raises():
    with pytest.raises(ValueError, match="keeps its model"):
        aggregate_class([])


def test_reporter_writes_results_and_curves(tmp_path):
    from cloud.reports import RoundReporter

    reporter = RoundReporter(tmp_path)
    for round_index, value in ((1, 0.6), (2, 0.8)):
        reporter.record_round({
            "round": round_index,
            "cumulative_updates": {"disc": round_index, "ring": 1},
            "metrics": {"disc": {"i_auroc": value}, "ring": {"i_auroc": 0.5}},
            "metrics_mean": {"i_auroc": (value + 0.5) / 2},
        })
    reporter.write_results({"disc": {"i_auroc": 0.8}}, {"i_auroc": 0.8})

    import json

    assert json.loads((tmp_path / "results.json").read_text())["mean"] == {"i_auroc": 0.8}
    assert (tmp_path / "results.csv").read_text().splitlines()[-1].startswith("mean,0.8000")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "rounds.jsonl").read_text().splitlines()) == 2
