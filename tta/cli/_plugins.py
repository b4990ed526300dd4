"""``tta plugins list`` / ``tta plugins check``, and the plugin lines of ``tta --version``.

``tta plugins list [--group G ...] [--load] [--json]`` shows every name of every group: built-ins and
the entry points of installed plugins, read from package metadata without importing them (``--load``
imports each one and checks it). ``tta plugins check [--group G ...] [--distribution D] [--json]``
loads and checks every plugin and exits with status 1 on any load failure, wrong type or name
conflict, for plugin authors' CI. Only the standard library and :mod:`tta.plugins` are imported here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from tta import plugins as P

__all__ = ["build_parser", "main", "plugin_version_lines"]


def _group(value: str) -> str:
    try:
        return P.get_registry(value).short_group
    except P.PluginNotFoundError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``tta plugins`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="tta plugins",
        description=(
            "List and check tta's registries: built-in backbones, datasets, distance estimators and "
            "transferability estimators, plus those of installed plugins (entry-point groups "
            "tta.backbones, tta.datasets, tta.distances, tta.estimators). Environment: "
            f"{P.ENV_DISABLE}=1 keeps the built-ins only; {P.ENV_ALLOW_LIST}=dist1,dist2 enables only "
            "these distributions' plugins."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="{list,check}")
    group_help = "a group to show: backbones, datasets, distances or estimators (repeatable; default: all)"

    p_list = sub.add_parser("list", help="list every name (reads package metadata, imports no plugin)")
    p_list.add_argument("--group", action="append", type=_group, help=group_help)
    p_list.add_argument("--load", action="store_true", help="import every plugin and check its type")
    p_list.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p_check = sub.add_parser(
        "check", help="import and check every plugin; exit status 1 on any error or name conflict"
    )
    p_check.add_argument("--group", action="append", type=_group, help=group_help)
    p_check.add_argument(
        "--distribution", help="check only this distribution's plugins (its conflicts with others included)"
    )
    p_check.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def _environment() -> dict[str, Any]:
    allow = P.allowed_distributions()
    return {
        "autoload_disabled": P.autoload_disabled(),
        "allow_list": sorted(allow) if allow is not None else None,
    }


def _environment_lines() -> list[str]:
    env = _environment()
    lines = []
    if env["autoload_disabled"]:
        lines.append(f"note: third-party plugins are disabled ({P.ENV_DISABLE}=1): built-ins only")
    elif env["allow_list"] is not None:
        lines.append(
            f"note: only these distributions' plugins are enabled ({P.ENV_ALLOW_LIST}): "
            + ", ".join(env["allow_list"])
        )
        installed = {P.normalize_distribution(d.name) for d in P.plugin_distributions()}
        for name in env["allow_list"]:
            if name not in installed:
                lines.append(f"warning: {P.ENV_ALLOW_LIST} names '{name}', which declares no tta plugin here")
    return lines


def _source(info: P.PluginInfo) -> str:
    if info.builtin:
        return "tta (built-in)"
    return f"{info.source} {info.version}" if info.version else info.source


def _table(rows: list[list[str]], out: TextIO, indent: str = "  ") -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths)]
        out.write((indent + "  ".join(cells)).rstrip() + "\n")


def _provider_note(arg: str | None, name: str) -> str:
    return f"provider: {name}/<{arg}>" if arg else ""


def _list(groups: list[str] | None, load: bool, as_json: bool, out: TextIO) -> int:
    registries = [P.get_registry(g) for g in groups] if groups else list(P.REGISTRIES.values())
    problems = P.metadata_problems()
    if as_json:
        entries: list[dict[str, Any]] = []
        for registry in registries:
            if load:
                entries.extend(r.as_dict() for r in registry.check())
            else:
                entries.extend(info.as_dict() for info in registry.entries())
        payload = {
            **_environment(),
            "groups": {r.group: r.contract.description if r.contract else None for r in registries},
            "entries": entries,
            "metadata_problems": problems,
        }
        out.write(json.dumps(payload, indent=2) + "\n")
        return 0
    for line in _environment_lines():
        out.write(line + "\n")
    for registry in registries:
        contract = f"  ({registry.contract.description})" if registry.contract else ""
        out.write(f"{registry.group}{contract}\n")
        rows = [["NAME", "SOURCE", "TARGET", "NOTE"]]
        notes: list[str] = []
        if load:
            for res in registry.check():
                info = res.info
                note = _provider_note(res.provider_arg, info.name)
                if res.ok:
                    note = "; ".join(n for n in ("loaded", note) if n)
                else:
                    note = f"ERROR ({info.status})" if info.status != "ok" else "ERROR"
                    notes.append(f"  ! {info.qualified_name}: {res.message}")
                rows.append([info.name, _source(info), info.target, note])
        else:
            for info in registry.entries():
                note = _provider_note(info.provider_arg, info.name)
                if info.status != "ok":
                    note = info.status.upper()
                    notes.append(f"  ! {info.qualified_name}: {info.problem}")
                rows.append([info.name, _source(info), info.target, note])
        _table(rows, out)
        for note in notes:
            out.write(note + "\n")
    for problem in problems:
        out.write(f"! {problem}\n")
    return 0


def _check(groups: list[str] | None, distribution: str | None, as_json: bool, out: TextIO) -> int:
    results = P.check(groups, distribution)
    problems = P.metadata_problems()
    failed = [r for r in results if not r.ok]
    plugins = [r for r in results if not r.info.builtin]
    if distribution is not None and not plugins:
        problems = [
            *problems,
            f"distribution '{distribution}' provides no enabled tta plugin"
            + (" in these groups" if groups else "")
            + " (is it installed, and allowed by the environment?)",
        ]
    if as_json:
        payload = {
            **_environment(),
            "ok": not failed and not problems,
            "results": [r.as_dict() for r in results],
            "metadata_problems": problems,
        }
        out.write(json.dumps(payload, indent=2) + "\n")
    else:
        for line in _environment_lines():
            out.write(line + "\n")
        rows = []
        for r in results:
            status = "ok" if r.ok else "ERROR"
            rows.append([status, r.info.group, r.info.name, _source(r.info), r.loaded or ""])
        if rows:
            _table(rows, out, indent="")
        for r in failed:
            out.write(f"\nERROR {r.info.group} {r.info.qualified_name}:\n  {r.message}\n")
        for problem in problems:
            out.write(f"\nERROR {problem}\n")
        out.write(
            f"\n{len(results)} names checked ({len(plugins)} from plugins): "
            f"{len(results) - len(failed)} ok, {len(failed) + len(problems)} problem(s).\n"
        )
    return 1 if failed or problems else 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run ``tta plugins ...``.

    Args:
        argv: The arguments after ``plugins`` (default: ``sys.argv[2:]``).
        out: Where to write (default: standard output).

    Returns:
        The exit status: 0, or 1 when ``check`` finds a problem (2 for a usage error, from argparse).
    """
    out = sys.stdout if out is None else out
    args = build_parser().parse_args(list(sys.argv[2:] if argv is None else argv))
    try:
        if (args.command or "list") == "list":
            opts = vars(args)  # `tta plugins` alone lists with the defaults
            return _list(opts.get("group"), opts.get("load", False), opts.get("json", False), out)
        return _check(args.group, args.distribution, args.json, out)
    except BrokenPipeError:  # `tta plugins list | head`: the reader left before the end
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0 if (args.command or "list") == "list" else 1  # an unread check counts as failed


def plugin_version_lines() -> list[str]:
    """Lines for ``tta --version``: each installed plugin distribution, its version and groups."""
    dists = P.plugin_distributions()
    if not dists:
        return ["plugins: none installed"]
    lines = []
    for d in dists:
        state = "" if d.enabled else f"  [disabled: {P.environment_note()}]"
        lines.append(f"plugin {d.name} {d.version or '?'} ({', '.join(d.groups)}){state}")
    return lines
