"""What a group's plugin object must be (checked when it is first loaded)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Contract:
    """What the objects of a group must be.

    Args:
        expected: Import path ``"module:Class"`` of the type the group is about (resolved lazily).
        form: ``"factory"``: the object is a subclass of ``expected`` or a callable returning an
            instance of it (checked on every call); ``"instance"``: the object is an instance of it.
        description: The contract in words, for error messages and ``tta plugins list``.
    """

    expected: str
    form: Literal["factory", "instance"]
    description: str

    @property
    def expected_name(self) -> str:
        """The public dotted name of the expected type, e.g. ``tta.distances.DistanceEstimator``."""
        module, _, attr = self.expected.partition(":")
        public = module.rsplit(".", 1)[0] if module.count(".") >= 2 else module
        return f"{public}.{attr}"

    def expected_type(self) -> type:
        """Import and return the expected type."""
        module, _, attr = self.expected.partition(":")
        return getattr(importlib.import_module(module), attr)
