"""`tta rank`: the "why" of each candidate, pseudo-labels, ranking by the bound, the command end to end."""

import json
from pathlib import Path

import pytest
import torch

from tta.benchmark import (
    explain,
    has_labels,
    kmeans_pseudo_labels,
    rank_candidates,
    separation,
    with_target_labels,
)
from tta.benchmark._config import BackboneSpec, BenchmarkConfig, PairSpec, parse_model_settings
from tta.cli._rank import main as rank_main
from tta.cli._rank import parse_backbone_item, parse_task_item
from tta.data import TaskSpec
from tta.modules._datamodule import FeaturePair, standardise

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "conf" / "benchmark_tiny.yaml"


def test_explain_names_the_dominant_term():
    key, share, why = explain({"weighted_source_loss": 0.2, "conditional_entropy": 1.2, "tau_w1": 0.6})
    assert key == "conditional_entropy" and share == pytest.approx(0.6)
    assert why.startswith("label mismatch dominates") and "60%" in why
    key, share, why = explain({"weighted_source_loss": 0.1, "conditional_entropy": 0.0, "tau_w1": 0.3})
    assert key == "tau_w1" and share == pytest.approx(0.75) and why.startswith("feature distance dominates")
    key, _, why = explain({"weighted_source_loss": 2.0, "conditional_entropy": 0.5, "tau_w1": 0.5})
    assert key == "weighted_source_loss" and why.startswith("source loss dominates")


def _blobs(sizes, d, sep, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(sizes), d, generator=g) * sep
    z = torch.cat([centres[c] + torch.randn(n, d, generator=g) for c, n in enumerate(sizes)])
    y = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(sizes)])
    return z, y


def test_kmeans_pseudo_labels_recover_separated_clusters_numbered_by_size():
    z, y = _blobs([40, 25, 10], d=5, sep=12.0, seed=0)
    zt, yt = _blobs([8, 6, 4], d=5, sep=12.0, seed=0)  # same centres (same seed), other points
    tr, te = kmeans_pseudo_labels(z, zt, 3, seed=0)
    assert torch.equal(tr, y)  # the largest cluster is 0, the next 1, ...
    assert torch.equal(te, yt)
    # invariance to the order of the points (a permutation of the training set)
    perm = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(1))
    tr2, _ = kmeans_pseudo_labels(z[perm], zt, 3, seed=0)
    assert torch.equal(tr2, y[perm])
    with pytest.raises(ValueError, match=r"k must be in \[2, 75\]"):
        kmeans_pseudo_labels(z, zt, 1)
    assert has_labels(y) and not has_labels(torch.full((3,), -1)) and not has_labels(torch.zeros(0))


def _pair_features(target_sep: float, unlabelled: bool = False) -> FeaturePair:
    zs, ys = _blobs([30, 30, 30], d=6, sep=6.0, seed=3)
    zs_te, ys_te = _blobs([15, 15, 15], d=6, sep=6.0, seed=3)
    zt, yt = _blobs([30, 30], d=6, sep=target_sep, seed=5)
    zt_te, yt_te = _blobs([15, 15], d=6, sep=target_sep, seed=5)
    s_tr, s_te = standardise(zs, zs_te)
    t_tr, t_te = standardise(zt, zt_te)
    if unlabelled:
        yt, yt_te = torch.full_like(yt, -1), torch.full_like(yt_te, -1)
    return FeaturePair((s_tr, ys), (s_te, ys_te), (t_tr, yt), (t_te, yt_te), ["a", "b", "c"], ["x", "y"])


def _config(tmp_path) -> BenchmarkConfig:
    fast = {"steps": 60, "batch_size": 90, "tau": 0.2}
    settings = parse_model_settings(
        {
            "source_head": fast,
            "probe": fast,
            "standard_probe": {**fast, "w_gp": 0.0},
            "transform": {"steps": 20, "batch_size": 90, "select_points": 90},
            "distance": "exact",
            "eval_distance": "exact",
        }
    )
    return BenchmarkConfig(pairs=[], model=settings, output_dir=str(tmp_path), estimators=[])


def _pairs(names):
    task = TaskSpec("precomputed")
    return [PairSpec(n, BackboneSpec("none"), "ref", task, "tgt", task) for n in names]


def test_separation_names_the_term_whose_difference_decides():
    """Equal source losses, different distribution terms: the distribution term separates them."""
    better = {
        "candidate": "a",
        "bound": 2.702,
        "terms": {"weighted_source_loss": 2.023, "conditional_entropy": 0.09, "tau_w1": 0.589},
    }
    worse = {
        "candidate": "b",
        "bound": 3.255,
        "terms": {"weighted_source_loss": 2.031, "conditional_entropy": 0.064, "tau_w1": 1.16},
    }
    key, diff, text = separation(better, worse)
    assert key == "tau_w1" and diff == pytest.approx(0.571)
    assert text.startswith("0.553 below b: distribution term decides (0.589 vs 1.160)")
    assert "source loss 2.023 vs 2.031" in text and "H(Y_T|Y_S) 0.090 vs 0.064" in text
    assert (
        explain(better["terms"])[0] == explain(worse["terms"])[0] == "weighted_source_loss"
    )  # the old "why"


def test_rank_candidates_sorts_by_bound_and_goes_label_free_without_labels(tmp_path):
    config = _config(tmp_path)
    feats = [_pair_features(0.2), _pair_features(8.0)]  # the second target is well separated
    ranking = rank_candidates(_pairs(["blurry", "separated"]), config, "backbones", features=feats)
    bounds = [r["bound"] for r in ranking.records]
    assert bounds == sorted(bounds) and [r["rank"] for r in ranking.records] == [1, 2]
    assert ranking.label_free is None
    for r in ranking.records:
        t = r["terms"]
        assert r["bound"] == pytest.approx(t["weighted_source_loss"] + t["conditional_entropy"] + t["tau_w1"])
        assert (r["dominant_term"], r["why"] if r["rank"] == 2 else None) == (
            explain(t)[0],
            f"last; {explain(t)[2]}" if r["rank"] == 2 else None,
        )
    first, second = ranking.records
    assert first["why"] == separation(first, second)[2] and first["why"].startswith(
        f"{second['bound'] - first['bound']:.3f} below"
    )
    by = {r["candidate"]: r for r in ranking.records}
    assert by["separated"]["ground_truth"]["probe_acc"] > by["blurry"]["ground_truth"]["probe_acc"]

    # a target without labels switches to k-means pseudo-labels on its own, and says so
    unlabelled = [_pair_features(8.0, unlabelled=True)]
    with pytest.raises(ValueError, match="--num-classes"):
        rank_candidates(_pairs(["separated"]), config, "backbones", features=unlabelled)
    ranking = rank_candidates(_pairs(["separated"]), config, "backbones", features=unlabelled, num_classes=2)
    assert ranking.label_free == {"method": "kmeans", "k": 2, "reason": "the target has no labels", "seed": 0}
    assert ranking.records[0]["label_free"]["k"] == 2
    # with well-separated blobs the pseudo-labels are the true partition (up to naming), so the bound
    # is the bound of the labelled task with the clusters renamed by size (here both have 30 points)
    fp = _pair_features(8.0)
    tr, te = kmeans_pseudo_labels(fp.target_train[0], fp.target_test[0], 2, seed=0)
    agree = (tr == fp.target_train[1]).float().mean().item()
    assert agree in (0.0, 1.0)
    relabelled = with_target_labels(fp, tr, te, 2)
    assert relabelled.target_class_names == ["cluster_0", "cluster_1"] and fp.target_class_names == ["x", "y"]


def test_transformed_pseudo_labels(tmp_path):
    config = _config(tmp_path)
    ranking = rank_candidates(
        _pairs(["separated"]),
        config,
        "backbones",
        label_free=True,
        pseudo_labels="transformed",
        features=[_pair_features(8.0)],
    )
    note = ranking.label_free
    assert (
        note["method"].startswith("transformed classifier") and note["reason"] == "requested (--label-free)"
    )
    assert ranking.records[0]["data"]["target_classes"] == ["pred_0", "pred_1"]


def test_item_parsing():
    assert parse_backbone_item("efficientnet_lite0:image_size=64") == BackboneSpec(
        "efficientnet_lite0", {"image_size": 64}
    )
    spec = parse_task_item("mnist_5k[0, 2,4]", 10, 5)
    assert spec == TaskSpec("mnist_5k", classes=[0, 2, 4], train_per_class=10, test_per_class=5)
    with pytest.raises(ValueError, match="key=value"):
        parse_backbone_item("efficientnet_lite0:image_size")
    with pytest.raises(ValueError, match="dataset name"):
        parse_task_item("mnist 5k", None, None)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("rank_cache"))


def test_rank_command_backbones(cache, tmp_path, capsys):
    out = tmp_path / "ranking.json"
    args = [
        "--config",
        str(TINY),
        "--target",
        "digits01",
        "--zoo",
        "lite0_32",
        "lite0_48",
        "--reference",
        "fmnist3",
        "--cache-dir",
        cache,
        "--json",
        str(out),
    ]
    assert rank_main(args) == 0
    text = capsys.readouterr().out
    assert "ranked by the tta bound" in text and "dominates" in text and "LABEL-FREE" not in text
    result = json.loads(out.read_text())
    assert result["kind"] == "backbones" and result["label_free"] is None
    bounds = [r["bound"] for r in result["ranking"]]
    assert bounds == sorted(bounds) and {r["candidate"] for r in result["ranking"]} == {
        "lite0_32",
        "lite0_48",
    }
    assert f"best candidate: {result['ranking'][0]['candidate']}" in text
    assert {r["variant"] for r in result["ranking"]} == {"paper"}  # the tiny config's variant

    # --variant overrides the config's, with the matching (unpenalised) reference head
    assert rank_main([*args, "--variant", "logit"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(logit variant; lower is better)" in text
    logit = json.loads(out.read_text())["ranking"]
    assert {r["variant"] for r in logit} == {"logit"}
    assert all(r["bound"] >= r["ground_truth"]["transformed_ce"] for r in logit)

    # --by transformed_acc: the same fits sorted by h‴'s target accuracy, said in the title and the JSON
    assert rank_main([*args, "--variant", "logit", "--by", "transformed_acc"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "ranked by the target accuracy of the transformed reference classifier h‴" in text
    assert "(logit variant; higher is better)" in text and "h‴ acc" in text
    by_acc = json.loads(out.read_text())
    accs = [r["ground_truth"]["transformed_acc"] for r in by_acc["ranking"]]
    assert by_acc["by"] == "transformed_acc" and accs == sorted(accs, reverse=True)
    best = by_acc["ranking"][0]
    assert (
        f"best candidate: {best['candidate']} (h‴ accuracy {accs[0]:.3f}, bound {best['bound']:.3f})" in text
    )
    assert {r["candidate"]: r["bound"] for r in by_acc["ranking"]} == {
        r["candidate"]: r["bound"] for r in logit
    }


def test_rank_command_label_free_and_errors(cache, capsys):
    args = [
        "--config",
        str(TINY),
        "--target",
        "digits01",
        "--zoo",
        "fmnist3",
        "digits3",
        "--backbone",
        "lite0_32",
        "--cache-dir",
        cache,
        "--label-free",
        "--num-classes",
        "2",
    ]
    assert rank_main(args) == 0
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())  # undo rich's wrapping
    assert "LABEL-FREE MODE" in text and "were NOT used" in text
    assert "kmeans" in text and "fmnist3" in text and "digits3" in text
    assert rank_main(["--target", "digits", "--zoo", "efficientnet_lite0", "digits"]) == 2
    assert "mixes backbones and reference tasks" in capsys.readouterr().err


def test_kmeans_gives_every_cluster_a_test_point():
    z, _ = _blobs([20, 20, 20], d=4, sep=10.0, seed=2)
    zt, _ = _blobs([5, 5, 1], d=4, sep=10.0, seed=2)
    zt = zt[:10]  # the third blob has no test point left
    tr, te = kmeans_pseudo_labels(z, zt, 3, seed=0)
    assert torch.bincount(te, minlength=3).min() >= 1 and torch.bincount(tr, minlength=3).min() >= 1
    # nearest-centre labels (k-means centres are the training cluster means) differ in one point only:
    # the test point closest to the empty cluster's centre, moved there
    centres = torch.stack([z[tr == c].mean(0) for c in range(3)])
    dist = torch.cdist(zt, centres)
    raw = dist.argmin(1)
    empty = [c for c in range(3) if not bool((raw == c).any())]
    assert len(empty) == 1
    moved = torch.nonzero(te != raw).flatten().tolist()
    assert moved == [int(dist[:, empty[0]].argmin())] and int(te[moved[0]]) == empty[0]


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        rank_main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--label-free" in text and "label mismatch dominates" in text


def test_rank_candidates_by_transformed_accuracy(tmp_path):
    """``by="transformed_acc"``: highest h‴ target accuracy first, the why names both accuracies and
    bounds; the bound, terms and ground truth are those of the default ranking (same fits)."""
    config = _config(tmp_path)
    seps = [0.2, 0.5, 1.0, 8.0]  # with these short fits two of them tie on accuracy (2 cores: 0.2 and 1.0)
    feats, names = [_pair_features(s) for s in seps], [f"sep{s}" for s in seps]
    by_bound = rank_candidates(_pairs(names), config, "backbones", features=feats)
    ranking = rank_candidates(_pairs(names), config, "backbones", features=feats, by="transformed_acc")
    assert ranking.by == "transformed_acc" and by_bound.by == "bound"
    accs = [r["ground_truth"]["transformed_acc"] for r in ranking.records]
    assert [r["rank"] for r in ranking.records] == [1, 2, 3, 4] and accs[0] > accs[-1]
    keys = [(-r["ground_truth"]["transformed_acc"], r["bound"]) for r in ranking.records]
    assert keys == sorted(keys)  # accuracy first, a tie broken by the bound
    same = {r["candidate"]: r for r in by_bound.records}
    for r in ranking.records:
        assert r["bound"] == same[r["candidate"]]["bound"] and r["terms"] == same[r["candidate"]]["terms"]
    first, second = ranking.records[:2]
    assert first["separated_by"] == "transformed_acc"
    assert first["separation"] == pytest.approx(accs[0] - accs[1])
    assert first["why"].startswith(
        f"h‴ accuracy {accs[0]:.3f} vs {accs[1]:.3f} of {second['candidate']}; "
        f"bound {first['bound']:.3f} vs {second['bound']:.3f}; "
    ) and ranking.records[-1]["why"].startswith("last; ")
    with pytest.raises(ValueError, match="by must be one of bound, transformed_acc, got 'probe'"):
        rank_candidates(_pairs(names), config, "backbones", features=feats, by="probe")
