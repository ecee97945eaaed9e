"""The bundle contract and the house rules that keep it one: the format-1 reader, field-level errors, a
writer that hashes each file once, concurrent writers, strict verify, the declared public API, no import
cycles, CLI defaults equal to the library's, and attach_basis validating before it changes anything.

Rules that would silently erode (names spelled outside bundle.py, private names in benchmarks, cycles) are
checked by reading the source (AST), so a new module cannot break them unnoticed.
"""

import ast
import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from edge_eigenlora import bundle
from edge_eigenlora.errors import EdgeEigenLoraError

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "android_demo" / "core" / "src" / "test" / "resources" / "golden"
FORMAT1_BUNDLE = ROOT / "tests" / "fixtures" / "format1_bundle"  # a bundle as version 1 wrote it (no graphs)


def _format1_bundle(tmp_path: Path) -> Path:
    return shutil.copytree(FORMAT1_BUNDLE, tmp_path / "b")


PACKAGE = ROOT / "edge_eigenlora"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


# ---------------------------------------------------------------------------------------------- format 1


def test_format_1_manifest_with_a_train_step_reads_into_the_typed_schema():
    data = json.loads((GOLDEN / "manifest_format1.json").read_text())
    assert data["format_version"] == 1 and "coefficients_size" in data["graphs"][1]
    manifest = bundle.Manifest.from_json(data, Path("/nowhere"))
    assert manifest.format_version == 1 and manifest.variants == ("shared", "train_step")
    train = manifest.graph("train_step")
    assert train.loss == "cross_entropy_mean" and train.max_seq == 512 and train.bytes is None
    assert train.input_names == bundle.graph_input_names("classification", bundle.TRAIN_STEP)
    assert train.output_names == bundle.graph_output_names("classification", bundle.TRAIN_STEP)
    assert train.ort_file == "model_train_step.ort" and train.external_data == ()
    assert manifest.graph("shared").quantization == bundle.Quantization("int8", "none", "fp32", 32)
    assert manifest.layout.size == 3072 and manifest.tokenizer.max_length == 128
    assert manifest.tasks["topic"].labels == ("sports", "politics", "science", "arts")


def test_format_1_bundle_opens_verifies_and_is_migrated_by_the_next_write(tmp_path):
    src = _format1_bundle(tmp_path)
    manifest = bundle.verify_bundle(src)
    assert manifest.format_version == 1
    task = bundle.load_bundle_task(manifest, "sentiment")
    task.name = "again"
    bundle.add_task_object(src, task)
    data = json.loads((src / "manifest.json").read_text())
    assert data["format_version"] == 2 and sorted(data["tasks"]) == ["again", "sentiment", "topic"]
    assert bundle.verify_bundle(src).format_version == 2


def test_format_1_train_step_with_a_wrong_coefficients_size_is_refused():
    data = json.loads((GOLDEN / "manifest_format1.json").read_text())
    data["graphs"][1]["coefficients_size"] = 7
    with pytest.raises(
        EdgeEigenLoraError, match=r"graphs.train_step.coefficients_size' is 7, the layout has 3072"
    ):
        bundle.Manifest.from_json(data, Path("/nowhere"))


@pytest.mark.parametrize(
    "path,value,message",
    [
        (("tokenizer", "max_length"), -5, r"field 'tokenizer.max_length' must be >= 1, got -5"),
        (
            ("base_model", "hidden_size"),
            "384",
            r"field 'base_model.hidden_size' must be an integer, got '384'",
        ),
        (("graphs", 0, "variant"), "fancy", r"field 'graphs\[0\].variant' must be one of"),
        (("graphs", 0, "file"), "../x.onnx", r"field 'graphs\[0\].file' path '../x.onnx' leaves the bundle"),
        (
            ("graphs", 0, "quantization", "basis"),
            "int3",
            r"field 'graphs\[0\].quantization.basis' must be one of",
        ),
        (("tasks", "topic", "num_labels"), 3, r"field 'tasks.topic' lists 4 labels for num_labels 3"),
        (("files",), [], r"field 'files' must map file names to sha256 hex digests"),
        (("kind",), 7, r"field 'kind' must be a string, got 7"),
    ],
)
def test_every_manifest_field_is_checked_with_its_name(path, value, message):
    data = json.loads((GOLDEN / "manifest_format1.json").read_text())
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(EdgeEigenLoraError, match=message):
        bundle.Manifest.from_json(data, Path("/b"))


def test_manifest_round_trips_through_json():
    data = json.loads((GOLDEN / "manifest_format1.json").read_text())
    manifest = bundle.Manifest.from_json(data, Path("/b"))
    again = bundle.Manifest.from_json(json.loads(json.dumps(manifest.to_json())), Path("/b"))
    assert again.to_json() == manifest.to_json() and again.graphs == manifest.graphs


# ---------------------------------------------------------------------------------------------- writes


def test_adding_a_task_hashes_only_the_new_file(tmp_path, monkeypatch):
    src = shutil.copytree(GOLDEN / "bundle", tmp_path / "b")
    task = bundle.load_bundle_task(src, "topic")
    task.name = "fresh"
    hashed = []
    real = bundle.sha256_file
    monkeypatch.setattr(bundle, "sha256_file", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    bundle.add_task_object(src, task)
    assert hashed == ["fresh.safetensors"]


def test_two_processes_adding_different_tasks_at_once_both_land(tmp_path):
    src = shutil.copytree(GOLDEN / "bundle", tmp_path / "b")
    code = textwrap.dedent(
        """
        import sys, time
        from edge_eigenlora import bundle
        task = bundle.load_bundle_task(sys.argv[1], "topic")
        task.name = sys.argv[2]
        while time.time() < float(sys.argv[3]):
            pass
        bundle.add_task_object(sys.argv[1], task)
        """
    )
    import time

    names = [f"task{i}" for i in range(6)]
    start_at = str(time.time() + 4.0)  # every process loads first, then all write at the same moment
    procs = [subprocess.Popen([sys.executable, "-c", code, str(src), n, start_at]) for n in names]
    assert [p.wait(timeout=120) for p in procs] == [0] * len(names)
    manifest = bundle.verify_bundle(src)
    assert sorted(manifest.tasks) == sorted(names + ["sentiment", "topic"])


def test_verify_refuses_unlisted_files_and_symlinks(tmp_path):
    src = shutil.copytree(GOLDEN / "bundle", tmp_path / "b")
    (src / "notes.txt").write_text("private")
    with pytest.raises(
        EdgeEigenLoraError,
        match=r"1 file\(s\) are in the bundle folder but not listed in manifest.json: \['notes.txt'\]",
    ):
        bundle.verify_bundle(src)
    (src / "notes.txt").unlink()
    (src / "link").symlink_to("/etc/hostname")
    with pytest.raises(EdgeEigenLoraError, match=r"not listed in manifest.json: \['link'\]"):
        bundle.verify_bundle(src)
    task = bundle.load_bundle_task(src, "topic")
    task.name = "t2"
    bundle.add_task_object(src, task)  # the writer never follows or lists the link
    assert "link" not in json.loads((src / "manifest.json").read_text())["files"]


def test_a_listed_file_replaced_by_a_symlink_is_refused(tmp_path):
    src = shutil.copytree(GOLDEN / "bundle", tmp_path / "b")
    target = src / "tokenizer" / "vocab.txt"
    shutil.copyfile(target, tmp_path / "vocab.txt")
    target.unlink()
    target.symlink_to(tmp_path / "vocab.txt")
    with pytest.raises(EdgeEigenLoraError, match=r"path 'tokenizer/vocab.txt' leaves the bundle folder"):
        bundle.verify_bundle(src)


def test_adding_a_task_that_exists_needs_overwrite(tmp_path):
    src = shutil.copytree(GOLDEN / "bundle", tmp_path / "b")
    before = (src / "tasks" / "topic.safetensors").read_bytes()
    task = bundle.load_bundle_task(src, "sentiment")
    task.name = "topic"
    with pytest.raises(
        EdgeEigenLoraError,
        match=r"task 'topic' already exists in .*; choose another name \(--name\) or pass --overwrite",
    ):
        bundle.add_task_object(src, task)
    assert (src / "tasks" / "topic.safetensors").read_bytes() == before
    bundle.add_task_object(src, task, overwrite=True)
    assert bundle.verify_bundle(src).tasks["topic"].labels == ("negative", "positive")


def test_a_task_whose_labels_do_not_match_its_head_is_refused(tmp_path):
    src = shutil.copytree(GOLDEN / "bundle", tmp_path / "b")
    task = bundle.load_bundle_task(src, "topic")
    task.name, task.labels = "mislabelled", ["a", "b"]
    with pytest.raises(EdgeEigenLoraError, match=r"field 'labels' lists 2 names but head.weight has 4 rows"):
        bundle.add_task_object(src, task)


def test_external_data_outside_the_entry_is_refused(tmp_path):
    """A graph whose external data points at a file its entry does not list is refused by verify."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    src = shutil.copytree(GOLDEN / "bundle", tmp_path / "b")
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    weight.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "8")):
        entry = weight.external_data.add()
        entry.key, entry.value = k, v
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [weight],
    )
    data = helper.make_model(graph).SerializeToString()
    assert bundle.onnx_external_locations(data) == {"../../etc/passwd"}
    manifest = json.loads((src / "manifest.json").read_text())
    (src / "model_shared.onnx").write_bytes(data)
    manifest["files"]["model_shared.onnx"] = bundle.sha256_file(src / "model_shared.onnx")
    entry = json.loads((GOLDEN / "manifest_format1.json").read_text())["graphs"][0]
    entry.pop("ort_file")
    entry.pop("required_operators")
    manifest["graphs"] = [entry]
    (src / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        EdgeEigenLoraError, match=r"reads external data from '../../etc/passwd', which is not a listed file"
    ):
        bundle.verify_bundle(src)
    del onnx


# ---------------------------------------------------------------------------------------------- the house rules


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in a file, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def test_no_import_cycle_among_library_modules_counting_function_level_imports():
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for module, names in _imports(path):
            if module in modules:
                deps.add(module)
            for n in names:  # `from edge_eigenlora import bundle` imports a module
                if f"{module}.{n}" in modules:
                    deps.add(f"{module}.{n}")
        graph[name] = deps - {name, "edge_eigenlora"}  # the package __init__ has no imports of its own
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1 and not cycle:
                cycle.extend(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycle, " -> ".join(cycle)


def test_every_public_module_declares_its_api():
    missing = [
        name
        for name, path in _modules().items()
        if not name.split(".")[-1].startswith("_")
        and name != "edge_eigenlora"
        and "__all__" not in path.read_text()
    ]
    assert not missing, missing


def _public_names() -> dict[str, set[str]]:
    out = {}
    for name, path in _modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "__all__" for t in node.targets
            ):
                out[name] = set(ast.literal_eval(node.value))
    return out


def test_benchmarks_and_scripts_use_only_the_public_api_and_never_import_tests():
    public, modules = _public_names(), _modules()
    problems = []
    for path in sorted([*ROOT.joinpath("benchmarks").glob("*.py"), *ROOT.joinpath("scripts").glob("*.py")]):
        rel = path.relative_to(ROOT)
        for module, names in _imports(path):
            if module == "tests" or module.startswith("tests."):
                problems.append(f"{rel}: imports {module}")
            if module.startswith("edge_eigenlora"):
                for n in names:
                    if f"{module}.{n}" in modules:
                        continue  # a module
                    if module in public and n not in public[module]:
                        problems.append(f"{rel}: {module}.{n} is not in __all__")
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                owner = ast.unparse(node.value)
                if owner != "self":  # a class's own private attributes are its business
                    problems.append(f"{rel}:{node.lineno}: private {owner}.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                problems += [f"{rel}: imports private {a.name}" for a in node.names if a.name.startswith("_")]
    assert not problems, "\n".join(problems)


CONTRACT_STRINGS = {
    "coefficients",
    "head_weight",
    "head_bias",
    "train_step",
    "per_row",
    "merged",
    "logits",
    "grad_coefficients",
    "grad_head_weight",
    "grad_head_bias",
    "model_shared.onnx",
    "weights.data",
    "manifest.json",
}


def test_no_module_outside_bundle_spells_a_contract_name():
    hits = []
    for name, path in _modules().items():
        if name == "edge_eigenlora.bundle":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in CONTRACT_STRINGS:
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not hits, "\n".join(hits)


def test_cli_defaults_equal_library_defaults():
    from edge_eigenlora.basis import SubspaceConfig
    from edge_eigenlora.cli import build_parser
    from edge_eigenlora.runtime.__main__ import build_parser as device_parser
    from edge_eigenlora.runtime.trainer import DeviceTrainConfig
    from edge_eigenlora.train_config import TrainConfig

    def defaults(parser, command, argv):
        return vars(parser.parse_args([command, *argv]))

    train = defaults(build_parser(), "train", ["--basis", "b"])
    for f in fields(TrainConfig):
        if f.name in train:
            assert train[f.name] == f.default, f.name
    assert train["head_lr"] is None and train["lr"] == TrainConfig.lr  # same as lr, like the API
    fit = defaults(build_parser(), "fit", ["a", "--out", "b"])
    for f in fields(SubspaceConfig):
        if f.name in fit and f.name != "k":  # --k is None so that --variance-threshold can replace it
            assert fit[f.name] == f.default, f.name
    assert (
        fit["k"] is None
        and f"default {SubspaceConfig.k}"
        in build_parser()._subparsers._group_actions[0].choices["fit"].format_help()
    )
    device = defaults(device_parser(), "train", ["B", "--name", "n", "--train-file", "f.csv"])
    for f in fields(DeviceTrainConfig):
        if f.name in device and f.name not in ("lr", "max_steps", "eval_every", "head_lr"):
            assert device[f.name] == f.default, f.name


def test_attach_basis_validates_every_module_before_changing_the_model():
    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertModel

    from edge_eigenlora.basis import Basis, ModuleBasis, SubspaceConfig
    from edge_eigenlora.model import attach_basis, eigenlora_layers

    model = BertModel(
        BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
        )
    ).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    rng = np.random.default_rng(0)

    def mb(d_out, d_in):
        return ModuleBasis(
            U_A=np.linalg.qr(rng.standard_normal((d_in, 4)))[0],
            U_B=np.linalg.qr(rng.standard_normal((d_out, 4)))[0],
            k=4,
            p=0,
            singular_values_A=np.ones(4),
            singular_values_B=np.ones(4),
            adapters=("a",),
            mean_core=np.zeros((4, 4)),
        )

    modules = {
        f"encoder.layer.{i}.attention.self.{m}": mb(16, 16) for i in range(2) for m in ("query", "value")
    }
    modules["encoder.layer.1.intermediate.dense"] = mb(16, 16)  # really 32 x 16: the last module is wrong
    basis = Basis(modules=modules, config=SubspaceConfig(k=4), base_model=None, bank=("a",))
    with pytest.raises(EdgeEigenLoraError, match=r"module 'encoder.layer.1.intermediate.dense' is 32 x 16"):
        attach_basis(model, basis, rank=2)
    assert not eigenlora_layers(model) and getattr(model, "_eigenlora_basis", None) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads


# ---------------------------------------------------------------------------------------------- the Kotlin mirror


def manifest_fields(manifest: bundle.Manifest) -> dict:
    """The fields both readers must agree on (the Kotlin test builds the same map from its typed Manifest)."""
    return {
        "kind": manifest.kind,
        "hidden_size": manifest.hidden_size,
        "base_model": manifest.base_model.name,
        "basis_fingerprint": manifest.basis_fingerprint,
        "coefficients": {
            "size": manifest.layout.size,
            "rank": manifest.layout.rank,
            "modules": list(manifest.layout.modules),
        },
        "graphs": [
            {
                "variant": g.variant,
                "file": g.file,
                "ort_file": g.ort_file,
                "required_operators": g.required_operators,
                "external_data": list(g.external_data),
                "inputs": list(g.input_names),
                "outputs": list(g.output_names),
                "quantization": [
                    g.quantization.basis,
                    g.quantization.base,
                    g.quantization.precision,
                    g.quantization.block_size,
                ],
                "loss": g.loss,
                "max_seq": g.max_seq,
            }
            for g in manifest.graphs
        ],
        "tokenizer": {
            "files": list(manifest.tokenizer.files),
            "max_length": manifest.tokenizer.max_length,
            "pad_token_id": manifest.tokenizer.pad_token_id,
        },
        "tasks": {
            n: {"file": t.file, "kind": t.kind, "labels": list(t.labels), "num_labels": t.num_labels}
            for n, t in sorted(manifest.tasks.items())
        },
        "referenced_files": manifest.referenced_files(),
    }


@pytest.mark.parametrize("name", ["manifest_format1.json", "manifest_v2.json"])
def test_python_reads_the_golden_manifests_into_the_fields_kotlin_checks(name):
    """manifest_fields.json is what ManifestFieldsTest.kt expects from its reader, for both format versions."""
    manifest = bundle.Manifest.from_json(json.loads((GOLDEN / name).read_text()), Path("/b"))
    assert manifest_fields(manifest) == json.loads((GOLDEN / "manifest_fields.json").read_text())[name]


def test_the_format_2_golden_is_the_migrated_format_1_manifest_with_shared_weights():
    v1 = bundle.Manifest.from_json(
        json.loads((GOLDEN / "manifest_format1.json").read_text()), Path("/b")
    ).to_json()
    v2 = json.loads((GOLDEN / "manifest_v2.json").read_text())
    assert v2["format_version"] == 2 and [g["external_data"] for g in v2["graphs"]] == [["weights.data"]] * 2
    for g in v2["graphs"]:
        g["external_data"] = []
    v2["files"].pop("weights.data")
    assert v2 == {**v1, "created_by": v2["created_by"]}
