"""tta.analyze: the one-call API on plain (features, labels) tensors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import tta
from tta.data import FeaturePair, standardise
from tta.errors import TTAInputError
from tta.fitting import AnalysisSettings, TransformConfig, analyze_features, split_features
from tta.heads import HeadConfig

FAST = dict(
    source_head=HeadConfig(w_gp=0.0, weight_decay=1e-2, steps=40, batch_size=64),
    probe=HeadConfig(tau=0.2, steps=40, batch_size=64),
    standard_probe=HeadConfig(w_gp=0.0, weight_decay=1e-2, steps=40, batch_size=64),
    transform=TransformConfig(variant="logit", steps=20, batch_size=60),
    eval_distance="exact",
)


def _task(k: int, n_per: int, d: int, seed: int, shift: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(k, d, generator=g)
    y = torch.arange(k).repeat_interleave(n_per)
    return means[y] + shift + torch.randn(len(y), d, generator=g), y


def test_analyze_is_the_engine_on_a_standardised_pair():
    reference, target = _task(3, 40, 6, seed=0), _task(2, 40, 6, seed=1, shift=0.5)
    result = tta.analyze(reference, target, **FAST)
    # the same pair built by hand through the step-by-step API gives the same bound, bit for bit
    (s_tr, s_te), (t_tr, t_te) = (split_features(*task, 0.25, 0) for task in (reference, target))
    zs, zs_te = standardise(s_tr[0], s_te[0])
    zt, zt_te = standardise(t_tr[0], t_te[0])
    pair = FeaturePair(
        (zs, s_tr[1]), (zs_te, s_te[1]), (zt, t_tr[1]), (zt_te, t_te[1]), ["0", "1", "2"], ["0", "1"]
    )
    settings = AnalysisSettings().with_variant("logit")

    _, expected = analyze_features(pair, replace(settings, **FAST), 0)
    assert result.bound == expected.bound
    assert result.bound >= result.transformed_classifier.target_ce
    assert result.report.trivial_level == pytest.approx(np.log(2), rel=1e-6)
    assert result.report.variant == "logit"


def test_analyze_accepts_numpy_and_given_test_splits():
    (zs, ys), (zt, yt) = _task(3, 30, 5, seed=2), _task(3, 30, 5, seed=3)
    test = torch.arange(90) % 3 == 0  # a third of every class
    result = tta.analyze(
        (zs.numpy(), ys.numpy()),
        (zt[~test].numpy(), yt[~test].numpy()),
        target_test=(zt[test].numpy(), yt[test].numpy()),
        target_classes=["a", "b", "c"],
        **FAST,
    )
    assert np.isfinite(result.bound)


def test_split_features_is_stratified_and_seeded():
    z, y = _task(3, 10, 2, seed=4)
    (_, ytr), (te, yte) = split_features(z, y, 0.3, seed=7)
    assert torch.bincount(yte).tolist() == [3, 3, 3] and torch.bincount(ytr).tolist() == [7, 7, 7]
    again = split_features(z, y, 0.3, seed=7)
    assert torch.equal(again[1][0], te)


def test_analyze_bad_input_is_one_line():
    reference, target = _task(3, 20, 4, seed=5), _task(2, 20, 5, seed=6)
    with pytest.raises(TTAInputError, match="feature dimension mismatch"):
        tta.analyze(reference, target, **FAST)
    with pytest.raises(TTAInputError, match="must be a \\(features, labels\\) pair"):
        tta.analyze(reference[0], target)
    with pytest.raises(TTAInputError, match="test_fraction must be in"):
        tta.analyze(reference, reference, test_fraction=1.5)
    with pytest.raises(TTAInputError, match=r"analyze: .*unexpected keyword"):
        tta.analyze(reference, reference, transfrom=TransformConfig())


def test_the_quickstart_one_call_example_runs_verbatim(capsys):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "quickstart.md").read_text()
    section = text.split("### In one call", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "quickstart.md", "exec"), {})
    out = capsys.readouterr().out
    assert "bound " in out and "trivial level 0.693" in out


def test_a_head_at_chance_is_named_in_the_warnings():
    """A reference head that learned nothing (lr 0: zero logits) is flagged; trained heads are not."""
    reference, target = _task(3, 40, 6, seed=0), _task(2, 40, 6, seed=1, shift=0.5)
    untrained = {
        **FAST,
        "source_head": HeadConfig(tau=0.2, steps=5, lr=0.0, batch_size=64),
        "transform": TransformConfig(variant="paper", steps=5, batch_size=60),
    }
    result = tta.analyze(reference, target, variant="paper", **untrained)  # logit needs a full-rank W
    notes = [w for w in result.warnings if "near chance" in w]
    assert len(notes) == 1 and notes[0].startswith("the reference classifier h_S is near chance")
    assert "model.source_head.steps" in notes[0] and "majority class 33.3%" in notes[0]
    trained = tta.analyze(reference, target, **FAST)
    assert not [w for w in trained.warnings if "near chance" in w]
