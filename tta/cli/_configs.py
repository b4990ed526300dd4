"""``tta configs list|show|path``, and ``--config NAME`` for the configs shipped inside the package.

The example configs live in ``tta/configs/`` (the repository's ``configs/`` is a link to it), so an
installed wheel carries them: ``tta fit --config demo`` works from any folder, and ``tta configs show demo
> my.yaml`` gives a copy to edit. A ``--config`` value that names an existing file is always that file;
otherwise a shipped config of that name (``demo``, ``benchmarks/offline``, ``configs/demo.yaml``) is used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from tta.cli._main import error_line

__all__ = ["bundled_configs", "config_root", "main", "resolve_config", "resolve_config_args"]


def config_root() -> Path:
    """The folder of the shipped configs (inside the installed package)."""
    return Path(str(resources.files("tta") / "configs"))


def bundled_configs() -> dict[str, Path]:
    """Every shipped config by name: its path under :func:`config_root` without ``.yaml``, sorted."""
    root = config_root()
    if not root.is_dir():
        return {}
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))}


def resolve_config(value: str) -> str:
    """``value`` if it is an existing file, else the path of the shipped config it names, else ``value``."""
    if Path(value).exists():
        return value
    name = value.removeprefix("configs/").removesuffix(".yaml").removesuffix(".yml")
    found = bundled_configs().get(name)
    return str(found) if found is not None else value


def resolve_config_args(argv: Sequence[str]) -> list[str]:
    """``argv`` with every ``--config NAME`` / ``--config=NAME`` naming a shipped config made a path."""
    out: list[str] = []
    expect = False
    for arg in argv:
        if expect:
            out.append(resolve_config(arg))
            expect = False
        elif arg == "--config":
            out.append(arg)
            expect = True
        elif arg.startswith("--config="):
            out.append("--config=" + resolve_config(arg.split("=", 1)[1]))
        else:
            out.append(arg)
    return out


def _description(path: Path) -> str:
    """The first comment line of a config (its purpose), without the ``#``."""
    for line in path.read_text().splitlines():
        text = line.strip()
        if text.startswith("#"):
            return text.lstrip("#").strip()
        if text:
            break
    return ""


def build_parser() -> argparse.ArgumentParser:
    """The ``tta configs`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="tta configs",
        description="The example configs shipped with tta. Any command's --config accepts their names "
        "(tta fit --config demo); copy one to edit it (tta configs show demo > my.yaml).",
    )
    sub = parser.add_subparsers(dest="command", metavar="{list,show,path}")
    sub.add_parser("list", help="every shipped config with what it is for")
    for name, text in (("show", "print a config (to copy and edit)"), ("path", "print a config's path")):
        p = sub.add_parser(name, help=text)
        p.add_argument("name", help="a name from `tta configs list`, e.g. demo or benchmarks/offline")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tta configs``; returns the exit status."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    configs = bundled_configs()
    if args.command in (None, "list"):
        width = max((len(n) for n in configs), default=0)
        for name, path in configs.items():
            print(f"{name:{width}s}  {_description(path)}")
        print(f"\n{len(configs)} configs in {config_root()}; use one with --config NAME", file=sys.stderr)
        return 0
    name = args.name.removeprefix("configs/").removesuffix(".yaml")
    if name not in configs:
        import difflib

        close = difflib.get_close_matches(name, list(configs), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        error_line(f"no shipped config named {args.name!r}{hint} (see `tta configs list`)")
        return 2
    if args.command == "show":
        sys.stdout.write(configs[name].read_text())
    else:
        print(configs[name])
    return 0
