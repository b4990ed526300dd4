"""Sphinx configuration of the tta documentation (MyST Markdown pages, autodoc for the API)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import yaml

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document the checkout, installed or not

project = "tta — Task Transfer Analysis"
author = "tta developers"
copyright = "tta developers"
try:
    release = metadata.version("task-transfer-analysis")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    release = "0.0.0"
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: $...$ / $$...$$ math, \begin{align} blocks, ::: fences.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# Google-style docstrings (they are also LightningCLI's --help).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

autodoc_default_options = {
    "member-order": "bysource",
    "show-inheritance": True,
}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
# Unresolved cross-references stay plain text; they are not errors (no intersphinx offline).
nitpicky = False

html_theme = "alabaster"
html_title = "tta"
html_theme_options = {
    "description": "Bound how well a frozen representation transfers to a classification task.",
    "fixed_sidebar": True,
}
html_static_path: list[str] = []

# Lightning's long docstrings (with its own Sphinx roles) must not leak into overridden hooks.
autodoc_inherit_docstrings = False


def _generate_demo_config() -> None:
    """Write the model/data part of `tta fit --config configs/demo.yaml --print_config` for the docs."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "tta.cli", "fit", "--config", "configs/demo.yaml", "--print_config"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd[1:])}` failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    config = yaml.safe_load(proc.stdout)
    out = DOCS / "_build" / "generated" / "demo_config.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({k: config[k] for k in ("model", "data")}, sort_keys=False, allow_unicode=True)
    out.write_text(text)


_generate_demo_config()
