"""Accuracy-benchmark plumbing: which bank adapters a config needs, and the CLI default's method name."""

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
