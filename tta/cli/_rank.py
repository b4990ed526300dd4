r"""``tta rank``: rank candidate backbones (or reference tasks) for one target by the tta bound.

Examples::

    tta rank --target mnist_5k --zoo efficientnet_lite0:image_size=64 efficientnet_lite0:image_size=112 \
        --reference fashion_mnist --train-per-class 60 --test-per-class 30 --fast
    tta rank --config configs/benchmarks/offline.yaml --target mnist --zoo lite0_32 lite0_64 lite0_112 \
        --reference fmnist
    tta rank --config configs/benchmarks/offline.yaml --target mnist --zoo fmnist fmnist_0to4 digits \
        --backbone lite0_64
    tta rank ... --label-free --num-classes 10
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from tta.cli._main import error_line
from tta.errors import TTAError, TTAInputError

__all__ = ["build_parser", "main", "parse_backbone_item", "parse_task_item"]

DESCRIPTION = """\
Rank candidate backbones (or candidate reference tasks) for one target task by the tta bound (lower is
better). Each candidate is fitted exactly as `tta fit` does; the table shows the three terms of the
bound and which one dominates ("label mismatch dominates" when H(Y_T|Y_S) is the largest share,
"feature distance dominates" for the distribution term, "source loss dominates" for the weighted source
loss), and what separates each candidate from the next.

--variant picks the bound (docs/method.md, "Bound variants"): `logit` (the default without --config) is
the logit-space transport with an unpenalised reference head, non-vacuous on most tasks; `paper` is the
authors' bound, tau*W1 in feature space with a tau-penalised head. With --config the config's variant is
used unless --variant is given.

--by transformed_acc sorts the candidates by the target test accuracy of the transformed reference
classifier h‴ (the classifier whose loss the bound certifies; same fits, highest first) instead of by
the bound. On both offline grids it predicts a standard linear probe's accuracy better than the bound
and every baseline (docs/benchmark.md, "4 Dec 2026: a chosen label map (H6) and a second grid"); it is
a score, not a certificate: the bound is still computed and shown.

Items of --zoo are backbones (a registry name, optionally with constructor arguments:
`efficientnet_lite0:image_size=64`, or a backbone named in --config) or reference tasks (a dataset name,
optionally with classes: `fashion_mnist[0,1,2]`, or a task named in --config), not a mix. --target is a
task the same way, or a YAML file with TaskSpec fields.

Label-free mode (--label-free, and automatically when the target has no labels): the target labels are
replaced by pseudo-labels, k-means clusters of the target features (k = --num-classes, default the
target's number of classes; seeded) or the transformed classifier's predictions (--pseudo-labels
transformed); the output says so.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tta rank``."""
    p = argparse.ArgumentParser(
        prog="tta rank", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--target", required=True, help="target task: name in --config, dataset[classes], or YAML file"
    )
    p.add_argument("--zoo", nargs="+", required=True, help="candidate backbones or candidate reference tasks")
    p.add_argument("--config", type=Path, help="benchmark YAML: named backbones/tasks and the fit settings")
    p.add_argument("--reference", help="reference task when ranking backbones (default: fashion_mnist)")
    p.add_argument("--backbone", help="backbone when ranking reference tasks (default: efficientnet_lite0)")
    p.add_argument(
        "--train-per-class", type=int, help="cap of training images per class of tasks given inline"
    )
    p.add_argument("--test-per-class", type=int, help="cap of test images per class of tasks given inline")
    p.add_argument(
        "--fast", action="store_true", help="fewer steps (heads 200, transform 100) without --config"
    )
    p.add_argument("--label-free", action="store_true", help="ignore the target labels: use pseudo-labels")
    p.add_argument(
        "--pseudo-labels", choices=("kmeans", "transformed"), default="kmeans", help="label-free source"
    )
    p.add_argument("--num-classes", type=int, help="number of pseudo-classes (default: the target's)")
    p.add_argument(
        "--variant",
        choices=("logit", "paper"),
        help="bound variant (default: the --config's, else logit); sets the matching reference head",
    )
    p.add_argument(
        "--by",
        choices=("bound", "transformed_acc"),
        default="bound",
        help="sort by the bound (lowest first, default) or by h‴'s target accuracy (highest first)",
    )
    p.add_argument("--cache-dir", help="feature cache directory")
    p.add_argument("--seed", type=int, help="seed of the fits and of k-means (default: the config's, or 0)")
    p.add_argument("--json", type=Path, help="also write the ranking as JSON to this file")
    return p


def _value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def parse_backbone_item(item: str) -> Any:
    """``name`` or ``name:key=value,key=value`` -> a :class:`~tta.benchmark.BackboneSpec`."""
    from tta.benchmark._config import BackboneSpec

    name, _, args = item.partition(":")
    init_args: dict[str, Any] = {}
    for part in filter(None, args.split(",")):
        key, eq, val = part.partition("=")
        if not eq:
            raise TTAInputError(f"backbone {item!r}: constructor arguments are key=value, got {part!r}")
        init_args[key.strip()] = _value(val)
    return BackboneSpec(name, init_args)


_TASK = re.compile(r"^(?P<name>[A-Za-z0-9_.\-/]+)(\[(?P<classes>[0-9,\s]*)\])?$")


def parse_task_item(item: str, train_cap: int | None, test_cap: int | None) -> Any:
    """``dataset`` or ``dataset[0,1,2]`` (or a YAML file of TaskSpec fields) -> a TaskSpec."""
    from tta.data._tasks import TaskSpec

    path = Path(item)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        import yaml

        raw = yaml.safe_load(path.read_text())
        if isinstance(raw, dict) and "data" in raw and isinstance(raw["data"], dict):  # a tta fit config
            raw = raw["data"].get("target", raw)
        if not isinstance(raw, dict):
            raise TTAInputError(f"{path}: expected a mapping of TaskSpec fields")
        return TaskSpec(**raw)
    m = _TASK.match(item.strip())
    if m is None:
        raise TTAInputError(f"task {item!r}: write a dataset name, optionally with classes: mnist_5k[0,1,2]")
    classes = m.group("classes")
    ids = [int(c) for c in classes.split(",") if c.strip()] if classes else None
    return TaskSpec(m.group("name"), classes=ids, train_per_class=train_cap, test_per_class=test_cap)


def _is_backbone(item: str, named: dict[str, Any]) -> bool:
    from tta.plugins import BACKBONES

    name = item.partition(":")[0]
    if name in named:
        return True
    if "/" in name:
        return True
    return name in BACKBONES.names()


def main(argv: list[str]) -> int:
    """Run ``tta rank``; returns the exit status (2 on invalid input)."""
    args = build_parser().parse_args(argv)
    from rich.console import Console
    from rich.panel import Panel

    out = Console()
    if not out.is_terminal:  # piped or captured: wide enough for the table, no wrapping
        out = Console(width=max(out.width, 140))
    try:
        if args.json is not None:  # before the fits, not after them
            from tta._preflight import check_writable_dir

            if Path(args.json).is_dir():
                raise TTAInputError(
                    f"--json {args.json} is a folder: give a file path, e.g. {args.json}/rank.json"
                )
            check_writable_dir(Path(args.json).parent, "the ranking's JSON file (--json)")
        ranking, target_name = _rank(args)
    except (TTAError, ValueError, FileNotFoundError, LookupError) as e:
        error_line(e)
        return 2
    if ranking.label_free:
        note = ranking.label_free
        out.print(
            Panel(
                f"LABEL-FREE MODE ({note['reason']}): the target's labels were NOT used. Pseudo-labels come "
                f"from {note['method']} with k={note['k']} (seed {note['seed']}); the bound is for that "
                "pseudo-labelled task, and the probe metrics are not ground truth.",
                style="bold yellow",
            )
        )
    out.print(ranking_table_for(ranking, target_name))
    from tta.benchmark._rank import term_legend

    out.print(term_legend(), highlight=False)
    best = ranking.records[0]
    value = f"bound {best['bound']:.3f}"
    if ranking.by == "transformed_acc":
        value = f"h‴ accuracy {best['ground_truth']['transformed_acc']:.3f}, {value}"
    out.print(f"best candidate: [bold]{best['candidate']}[/bold] ({value}); {best['why']}")
    if best.get("vacuous"):
        out.print(
            f"note: the best bound {best['bound']:.3f} is above the trivial level "
            f"{best['trivial_level']:.3f} "
            "(predicting the target prior): as a certificate it is vacuous; the ranking still compares "
            "the candidates' bounds"
        )
    if args.json is not None:
        from tta.results import write_json_atomic

        write_json_atomic(
            args.json,
            {
                "target": target_name,
                "kind": ranking.kind,
                "by": ranking.by,
                "label_free": ranking.label_free,
                "ranking": ranking.records,
            },
        )
        out.print(f"ranking written to [bold]{args.json}[/bold]")
    return 0


def ranking_table_for(ranking: Any, target: str) -> Any:
    """The rich table of a ranking (see :func:`tta.benchmark.ranking_table`)."""
    from tta.benchmark._rank import ranking_table

    return ranking_table(ranking, target)


def _rank(args: argparse.Namespace) -> tuple[Any, str]:
    from tta.benchmark._config import (
        BenchmarkConfig,
        ModelSettings,
        PairSpec,
        load_config,
        parse_model_settings,
    )
    from tta.benchmark._rank import rank_candidates

    if args.config is not None:
        import yaml

        config = load_config(args.config)
        raw = yaml.safe_load(Path(args.config).read_text())
        from tta.benchmark._config import parse_backbone, parse_task

        named_backbones = {str(k): parse_backbone(v, k) for k, v in (raw.get("backbones") or {}).items()}
        named_tasks = {str(k): parse_task(v, k) for k, v in (raw.get("tasks") or {}).items()}
        settings = config.model
        seed, cache_dir = config.seed, config.cache_dir
    else:
        named_backbones, named_tasks = {}, {}
        settings = (
            parse_model_settings(
                {
                    "source_head": {"steps": 200},
                    "probe": {"steps": 200},
                    "standard_probe": {"steps": 200},
                    "transform": {"steps": 100},
                }
            )
            if args.fast
            else ModelSettings()
        )
        seed, cache_dir = 0, None
    variant = args.variant or (None if args.config is not None else "logit")
    if variant is not None:
        settings = settings.with_variant(variant)
    if args.seed is not None:
        seed = args.seed
    if args.cache_dir is not None:
        cache_dir = args.cache_dir

    def task(item: str) -> tuple[str, Any]:
        if item in named_tasks:
            return item, named_tasks[item]
        spec = parse_task_item(item, args.train_per_class, args.test_per_class)
        return item, spec

    def backbone(item: str) -> tuple[str, Any]:
        if item in named_backbones:
            return item, named_backbones[item]
        return item, parse_backbone_item(item)

    target_name, target = task(args.target)
    kinds = {_is_backbone(item, named_backbones) for item in args.zoo}
    if len(kinds) != 1:
        raise TTAInputError(
            f"--zoo mixes backbones and reference tasks ({args.zoo}); rank one kind at a time"
        )
    ranking_backbones = kinds.pop()
    pairs = []
    if ranking_backbones:
        if args.backbone:
            raise TTAInputError("--backbone is for ranking reference tasks; the zoo here is backbones")
        ref_name, ref = task(args.reference or "fashion_mnist")
        for item in args.zoo:
            b_name, b = backbone(item)
            pairs.append(PairSpec(b_name, b, ref_name, ref, target_name, target))
    else:
        if args.reference:
            raise TTAInputError("--reference is for ranking backbones; the zoo here is reference tasks")
        b_name, b = backbone(args.backbone or "efficientnet_lite0")
        for item in args.zoo:
            r_name, r = task(item)
            pairs.append(PairSpec(b_name, b, r_name, r, target_name, target))
    config = BenchmarkConfig(
        pairs=pairs, model=settings, seed=seed, cache_dir=cache_dir, output_dir="runs/rank", estimators=[]
    )
    ranking = rank_candidates(
        pairs,
        config,
        "backbones" if ranking_backbones else "references",
        label_free=args.label_free,
        pseudo_labels=args.pseudo_labels,
        num_classes=args.num_classes,
        by=args.by,
    )
    return ranking, target_name
