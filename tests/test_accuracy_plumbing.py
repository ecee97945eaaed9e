"""Accuracy-benchmark plumbing: which bank adapters a config needs, and the CLI default's method name."""

import numpy as np

from benchmarks import accuracy
from benchmarks.report import cli_default_method


def _config(methods, held_out):
    return {
        "grid": [{"regimes": ["low"], "bank_sizes": [4], "seeds": [0], "methods": methods}],
        "held_out": held_out,
    }


def test_family_adapters_are_trained_only_when_a_family_method_needs_them():
    order = accuracy.all_task_order()
    families = accuracy.families()
    held_out = order[5]
    plain = accuracy.needed_bank_tasks(_config(["eigen/gauge_free/k32/aug0/bank"], [held_out]), order)
    assert plain == accuracy.bank_for(held_out, 4, order)  # the bank of 4, nothing more
    with_family = accuracy.needed_bank_tasks(_config(["family/gauge_free/k32/aug0/bank"], [held_out]), order)
    relatives = {t for t in order if t != held_out and families[t] == families[held_out]}
    assert set(with_family) == set(plain) | relatives and len(with_family) > len(plain)


def test_the_cli_default_is_a_method_the_grid_understands():
    method = accuracy.parse_method(cli_default_method())
    assert (method.kind, method.subspace, method.k, method.augment, method.init) == (
        "eigen",
        "gauge_free",
        32,
        0,
        "bank",
    )


def test_matched_init_methods_parse_and_use_the_bank():
    from benchmarks.report import matched_random

    rand = accuracy.parse_method("random/k32/mean")
    assert (rand.kind, rand.k, rand.init, rand.r, rand.uses_bank) == ("random", 32, "mean", 8, True)
    assert not accuracy.parse_method("random/k32").uses_bank
    assert accuracy.parse_method("random/k32/r1").r == 1
    mean = accuracy.parse_method("eigen/gauge_free/k32/aug0/mean")
    assert (mean.init, mean.uses_bank, mean.trains_adapter) == ("mean", True, True)
    head = accuracy.parse_method("meanhead")
    assert (head.uses_bank, head.trains_adapter) == (True, False)
    # the random control of each recycled arm starts where it starts
    assert matched_random("eigen/gauge_free/k32/aug0/zero", 32) == "random/k32"
    assert matched_random("eigen/gauge_free/k32/aug0/bank", 32) == "random/k32/mean"
    assert matched_random("eigen/gauge_free/k32/aug0/mean", 32) == "random/k32/mean"


def test_every_method_kind_gets_a_learning_rate_grid_of_the_same_size():
    config = {
        "regimes": {"low": {"train": {"lr": 0.005, "head_lr": 0.01}}},
        "lr_overrides": {},
        "lr_grid": {"head": [0.01, 0.03], "lora": [0.001, 0.003], "coefficients": [0.005, 0.015]},
    }
    grid = {
        m: accuracy.lr_candidates(config, accuracy.parse_method(m), "low")
        for m in ("head", "meanhead", "lora/r8", "random/k32/mean", "eigen/gauge_free/k8/aug0/bank")
    }
    assert grid["head"] == grid["meanhead"] == [(0.005, 0.01), (0.005, 0.03)]  # the head's lr is tuned
    assert grid["lora/r8"] == [(0.001, 0.01), (0.003, 0.01)]
    assert grid["random/k32/mean"] == grid["eigen/gauge_free/k8/aug0/bank"] == [(0.005, 0.01), (0.015, 0.01)]
    assert accuracy.lr_candidates(config | {"lr_grid": None}, accuracy.parse_method("lora/r8"), "low") == [
        (0.005, 0.01)
    ]


def test_paired_differences_are_per_task_so_the_se_is_over_tasks():
    from benchmarks.report import _stats, paired

    rows = []
    for task, diffs in {"a": (1.0, 3.0), "b": (2.0, 2.0)}.items():
        for seed, d in enumerate(diffs):
            rows.append(
                {
                    "method": "x",
                    "task": task,
                    "seed": seed,
                    "regime": "low",
                    "bank_size": 0,
                    "test_accuracy": 0.5 + d / 100,
                }
            )
            rows.append(
                {
                    "method": "y",
                    "task": task,
                    "seed": seed,
                    "regime": "low",
                    "bank_size": 0,
                    "test_accuracy": 0.5,
                }
            )
    diffs = paired(rows, "x", "y", "low", 0, ["a", "b"])
    assert len(diffs) == 2 and np.allclose(diffs, [0.02, 0.02])
    mean, _, se, n = _stats(diffs)
    assert (n, round(mean, 6), se) == (2, 0.02, 0.0)  # over task x seed it would have been n=4, SE > 0


def test_built_bank_size_is_the_largest_bank_whose_adapters_are_all_trained(tmp_path, monkeypatch):
    from benchmarks import accuracy

    order = [f"t{i}" for i in range(6)]
    monkeypatch.setattr(accuracy, "all_task_order", lambda: order)
    monkeypatch.setattr(accuracy, "bank_dir", lambda config: tmp_path)
    config = {"held_out": ["t0"], "grid": [{"bank_sizes": [2]}, {"bank_sizes": [4]}]}
    assert accuracy.built_bank_size(config) is None
    for name in ("t1", "t2", "t3"):  # the bank of 2 for t0 is t1, t2; the bank of 4 also needs t4
        (tmp_path / name).mkdir()
        (tmp_path / name / "training.json").write_text("{}")
    assert accuracy.built_bank_size(config) == 2
    (tmp_path / "t4").mkdir()
    assert accuracy.built_bank_size(config) == 2  # a folder without training.json is not trained
    (tmp_path / "t4" / "training.json").write_text("{}")
    assert accuracy.built_bank_size(config) == 4
