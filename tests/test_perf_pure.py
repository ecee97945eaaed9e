"""Pure parts of the performance benchmarks: paired ratios, the multiply-add model, LoRA weights found by value."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks.fixtures import peft_key
from benchmarks.latency import macs_at, summarize
from benchmarks.perf import lora_nodes, promote_to_inputs


def _cell(base, other, peft=None):
    times = {"base/fp32": base, "eigen_shared/fp32": other}
    if peft is not None:
        times["peft_unmerged/fp32"] = peft
    return {"batch": 2, "seq": 4, "threads": 1, "times_s": times}


def test_ratios_are_paired_per_repetition():
    # machine load doubles in round 2 for both: paired ratios stay exactly 1.1
    base = [[0.010, 0.010, 0.010], [0.020, 0.020, 0.020]]
    other = [[0.011, 0.011, 0.011], [0.022, 0.022, 0.022]]
    macs = {
        "base/fp32": {"per_call": 0, "per_sequence": 0, "per_token": 100, "attention": 0},
        "eigen_shared/fp32": {"per_call": 80, "per_sequence": 0, "per_token": 110, "attention": 0},
    }
    rows = {r["variant"]: r for r in summarize(_cell(base, other, peft=base), macs)}
    r = rows["eigen_shared"]
    assert r["ratio_p50"] == pytest.approx(1.1) and r["ratio_p90"] == pytest.approx(1.1)
    assert r["ratio_round_p50s"] == pytest.approx([1.1, 1.1]) and r["ratio_round_spread"] == pytest.approx(0)
    assert r["ratio_to_peft_p50"] == pytest.approx(1.1)
    assert r["macs_per_token"] == pytest.approx((80 + 110 * 8) / 8)
    assert r["macs_ratio"] == pytest.approx((80 + 110 * 8) / 800)
    assert r["measured_over_expected"] == pytest.approx(1.1 / r["macs_ratio"])
    assert rows["base"]["ratio_p50"] == 1.0 and rows["base"]["samples"] == 6


def test_macs_polynomial():
    m = {"per_call": 5, "per_sequence": 7, "per_token": 11, "attention": 13}
    assert macs_at(m, 2, 3) == 5 + 7 * 2 + 11 * 6 + 13 * 18


def test_lora_weights_found_by_value_renamed_and_promoted():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((2, 4)).astype(np.float32)  # PEFT: A is r x d_in, B is d_out x r
    B = rng.standard_normal((4, 2)).astype(np.float32)
    W = rng.standard_normal((4, 4)).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(A.T), "val_1"),
        numpy_helper.from_array(np.ascontiguousarray(B.T), "val_2"),
        numpy_helper.from_array(W, "val_3"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "val_3"], ["h"], name="base"),
        helper.make_node("MatMul", ["x", "val_1"], ["a"], name="lora_a"),
        helper.make_node("MatMul", ["a", "val_2"], ["b"], name="lora_b"),
        helper.make_node("Add", ["h", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        inits,
    )
    model = helper.make_model(graph)
    peft = {"base_model.model.enc.q.lora_A.weight": A, "base_model.model.enc.q.lora_B.weight": B}
    names, weights = lora_nodes(model, peft)
    assert names == ["lora_a", "lora_b"] and weights == ["enc.q.lora_A_t", "enc.q.lora_B_t"]
    assert [peft_key(w) for w in weights] == sorted(peft)
    promote_to_inputs(model, weights)
    assert [i.name for i in model.graph.input] == ["x", "enc.q.lora_A_t", "enc.q.lora_B_t"]
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, 4)).astype(np.float32)
    default = sess.run(None, {"x": x})[0]
    assert np.allclose(default, x @ W + x @ A.T @ B.T, atol=1e-5)
    zero = sess.run(None, {"x": x, "enc.q.lora_B_t": np.zeros((2, 4), np.float32)})[0]  # overridable default
    assert np.allclose(zero, x @ W, atol=1e-5)


def test_adapted_modules_are_the_real_minilms_twelve_query_value_projections(minilm):
    from benchmarks.perf import adapted_modules

    names = adapted_modules(minilm[0])
    assert len(names) == 12 and {n.rsplit(".", 1)[-1] for n in names} == {"query", "value"}
    assert names[0] == "encoder.layer.0.attention.self.query"


def test_adapted_modules_refuse_a_model_without_attention_projections():
    import torch

    from benchmarks.perf import adapted_modules

    with pytest.raises(RuntimeError, match="no attention q/v projections"):
        adapted_modules(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_the_base_again_control_is_paired_with_the_base_and_costs_the_base_arithmetic():
    base = [[0.010, 0.010], [0.020, 0.020]]
    again = [[0.012, 0.012], [0.024, 0.024]]  # the same graph, a slower placement: 1.2 in every round
    cell = {"batch": 1, "seq": 4, "threads": 1, "times_s": {"base/fp32": base, "base_again/fp32": again}}
    macs = {"base/fp32": {"per_call": 0, "per_sequence": 0, "per_token": 100, "attention": 0}}
    row = next(r for r in summarize(cell, macs) if r["variant"] == "base_again")
    assert row["ratio_p50"] == pytest.approx(1.2) and row["macs_ratio"] == pytest.approx(1.0)
    assert row["measured_over_expected"] == pytest.approx(1.2)


def test_a_ratio_target_is_met_only_beyond_the_control_spread():
    from benchmarks.perf_report import control_spread, judge

    again = {"ratio_p50": 0.95, "ratio_round_p50s": [0.92, 1.03, 0.97]}  # two sessions of one graph
    spread = control_spread(again)
    assert spread == pytest.approx(0.08)
    assert judge(1.05 - 0.897, spread) == "MET"  # margin 0.153 > 0.08
    assert judge(1.05 - 1.0, spread).startswith("NOT RESOLVED")  # margin 0.05 is inside the noise
    assert judge(1.05 - 1.20, spread) == "MISSED"  # off by 0.15 > 0.08


def test_switch_cost_is_the_p50_of_paired_differences_with_an_interval():
    from benchmarks.task_switch import paired_delta

    # load drifts from 10 ms to 30 ms; every switched run is 0.2 ms slower than its neighbour
    same = np.linspace(0.010, 0.030, 101)
    d = paired_delta(list(same + 0.0002 - same))
    assert d["p50_ms"] == pytest.approx(0.2) and d["n"] == 101
    lo, hi = d["p50_ci95_ms"]
    assert lo == pytest.approx(0.2) and hi == pytest.approx(0.2)


def test_device_memory_ratios_are_per_round_and_above_each_runtimes_import():
    from benchmarks.device_memory import ratios, summarize

    def row(name, peak):
        return {
            "scenario": name,
            "peak_rss_mib": peak,
            "polled_max_rss_mib": peak,
            "median_step_s": 0.1,
            "torch_loaded": name.startswith("torch"),
        }

    rounds = [
        [row("baseline", 50), row("torch_baseline", 400), row("grad_step", 350), row("torch_lora", 900)],
        [row("baseline", 60), row("torch_baseline", 410), row("grad_step", 370), row("torch_lora", 910)],
    ]
    r = ratios(rounds, "grad_step", "torch_lora")
    assert r["whole_min"] == pytest.approx(350 / 900) and r["whole_max"] == pytest.approx(370 / 910)
    assert r["above_import"] == pytest.approx(np.median([300 / 500, 310 / 500])) and r["n"] == 2
    rows = {x["scenario"]: x for x in summarize(rounds)}
    assert rows["grad_step"]["above_import_mib"] == pytest.approx(305) and rows["grad_step"]["n"] == 2
    assert (
        rows["torch_lora"]["above_min"] == pytest.approx(500)
        and rows["torch_baseline"]["above_import_mib"] == 0
    )
