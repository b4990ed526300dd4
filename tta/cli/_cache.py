"""``tta cache list`` / ``tta cache clear``: inspect and prune the on-disk feature cache.

``tta cache list [--cache-dir DIR] [--json] [--no-verify]`` shows every entry (key prefix, backbone, task,
split, N×d, size on disk, creation time, status ``ok``/``corrupt``/``partial``) as a table, or as JSON.
``tta cache clear [--cache-dir DIR] [--backbone B] [--dataset D] [--key PREFIX] [--dry-run] [--json]``
removes every entry, or those matching all the given filters, plus every leftover of an interrupted
write or extraction, and reports the bytes freed. The cache directory defaults to ``$TTA_CACHE_DIR``, else
``$XDG_CACHE_HOME/tta/features`` (``~/.cache/tta/features``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from tta.cli._main import error_line
from tta.data._cache import CacheEntry, FeatureCache, default_cache_dir

__all__ = ["build_parser", "format_bytes", "main"]


def format_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def build_parser() -> argparse.ArgumentParser:
    """The ``tta cache`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="tta cache",
        description=(
            "Inspect and prune tta's feature cache: one safetensors file plus a JSON manifest (with a "
            "SHA-256 checksum) per backbone, task and split. Directory: --cache-dir, else $TTA_CACHE_DIR, "
            f"else $XDG_CACHE_HOME/tta/features (~/.cache/tta/features) (now: {default_cache_dir()})."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="{list,clear}")

    def add_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--cache-dir",
            type=Path,
            default=None,
            help="the cache directory (default: $TTA_CACHE_DIR, else $XDG_CACHE_HOME/tta/features)",
        )
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p_list = sub.add_parser(
        "list",
        help="show every entry with its size and status (ok, corrupt, partial)",
        description="Show every entry: key prefix, backbone, task, split, N×d, size on disk, creation "
        "time, status. ok: the checksum and tensors verify; corrupt: a manifest whose entry does not "
        "verify (it is rebuilt on next use); partial: a leftover of an interrupted write or extraction.",
    )
    add_dir(p_list)
    p_list.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the checksum of every entry (fast; an entry with a manifest and its data file is ok)",
    )

    p_clear = sub.add_parser(
        "clear",
        help="remove all entries, or those matching the filters, and every partial leftover",
        description="Remove every entry, or the entries matching all the given filters; leftovers of "
        "interrupted writes or extractions (temporary files, shard directories, data without a "
        "manifest) are removed too (with --key, only those of matching keys). Reports the bytes freed.",
    )
    add_dir(p_clear)
    p_clear.add_argument("--backbone", help="only entries of this backbone (e.g. efficientnet_lite0)")
    p_clear.add_argument("--dataset", help="only entries of tasks on this dataset (e.g. fashion_mnist)")
    p_clear.add_argument("--key", help="only entries whose key starts with this prefix")
    p_clear.add_argument("--dry-run", action="store_true", help="show what would be removed; remove nothing")
    return parser


def _matches(entry: CacheEntry, backbone: str | None, dataset: str | None, key: str | None) -> bool:
    if key is not None and not entry.key.startswith(key):
        return False
    if entry.status == "partial":  # a leftover carries no metadata: a filter on it cannot hold
        return backbone is None and dataset is None
    if backbone is not None and entry.backbone != backbone:
        return False
    return dataset is None or entry.dataset == dataset


def _shape(entry: CacheEntry) -> str:
    return "×".join(str(v) for v in entry.shape) if entry.shape else "-"


def _table(entries: list[CacheEntry], title: str) -> object:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name, justify in (
        ("key", "left"),
        ("backbone", "left"),
        ("task", "left"),
        ("split", "left"),
        ("N×d", "right"),
        ("size", "right"),
        ("created", "left"),
        ("status", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    styles = {"ok": "green", "corrupt": "red", "partial": "yellow"}
    for e in entries:
        status = f"[{styles.get(e.status, '')}]{e.status}[/]"
        if e.reason:
            status += f" ({e.reason})"
        table.add_row(
            e.key[:12],
            e.backbone or "-",
            e.task or "-",
            e.split or "-",
            _shape(e),
            format_bytes(e.size),
            e.created or "-",
            status,
        )
    return table


def _console(out: TextIO) -> Any:
    from rich.console import Console

    return Console(file=out, highlight=False, soft_wrap=False, width=200 if not out.isatty() else None)


def _list(args: argparse.Namespace, cache: FeatureCache, out: TextIO) -> int:
    entries = cache.scan(verify=not args.no_verify)
    if args.json:
        payload = {"cache_dir": str(cache.root), "entries": [e.to_dict() for e in entries]}
        print(json.dumps(payload, indent=2), file=out)
        return 0
    console = _console(out)
    if not entries:
        console.print(f"feature cache {cache.root}: empty")
        return 0
    total = sum(e.size for e in entries)
    console.print(_table(entries, f"feature cache {cache.root}"))
    counts = {s: sum(e.status == s for e in entries) for s in ("ok", "corrupt", "partial")}
    console.print(
        f"{len(entries)} entries, {format_bytes(total)}: "
        + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    )
    return 0


def _clear(args: argparse.Namespace, cache: FeatureCache, out: TextIO) -> int:
    entries = [e for e in cache.scan(verify=False) if _matches(e, args.backbone, args.dataset, args.key)]
    freed = 0
    removed: list[CacheEntry] = []
    for e in entries:
        if args.dry_run:
            freed += e.size
        else:
            freed += cache.remove(e)
        removed.append(e)
    if args.json:
        payload = {
            "cache_dir": str(cache.root),
            "dry_run": bool(args.dry_run),
            "removed": [e.to_dict() for e in removed],
            "freed_bytes": freed,
        }
        print(json.dumps(payload, indent=2), file=out)
        return 0
    console = _console(out)
    verb = "would remove" if args.dry_run else "removed"
    for e in removed:
        what = e.task or e.reason or "entry"
        console.print(f"{verb} {e.key[:12]}  {e.backbone or '-'}  {what} {e.split}  [{e.status}]".rstrip())
    freed_word = "would free" if args.dry_run else "freed"
    console.print(f"{verb} {len(removed)} entries from {cache.root}; {freed_word} {format_bytes(freed)}")
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run ``tta cache ...``.

    Args:
        argv: The arguments after ``tta cache`` (default: ``sys.argv[2:]``).
        out: Where to print (default: stdout).

    Returns:
        The exit status: 0, or 2 for a usage error.
    """
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[2:] if argv is None else argv))
    out = out or sys.stdout
    if args.command is None:
        parser.print_help(out)
        return 2
    cache = FeatureCache(args.cache_dir)
    if args.cache_dir is not None and cache.root.exists() and not cache.root.is_dir():
        error_line(f"--cache-dir {cache.root} is a file, not a directory")
        return 2
    if args.command == "list":
        return _list(args, cache, out)
    return _clear(args, cache, out)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
