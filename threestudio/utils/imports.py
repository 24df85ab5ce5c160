"""Lazy imports of optional dependencies.

Every optional package (triton, tinycudann, nerfacc, gsplat, nvdiffrast, xatlas, ...) is imported through
:func:`require` at the point of use, never at module import time, so that ``import threestudio`` works with only the
core requirements installed.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional


class MissingDependencyError(ImportError):
    """An optional package is needed for the requested feature but is not importable."""


def require(module: str, purpose: str, install: Optional[str] = None) -> ModuleType:
    """Import ``module`` or raise a :class:`MissingDependencyError` that says what needs it and how to install it.

    Args:
        module: dotted module name, e.g. ``"triton"`` or ``"nerfacc"``.
        purpose: what the caller wanted to do, e.g. ``"the Triton hash-grid backend"``.
        install: the command that installs it; defaults to ``pip install <top-level name>``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - message path tested via available()
        top = module.split(".")[0]
        hint = install or f"pip install {top}"
        raise MissingDependencyError(
            f"{purpose} needs the optional package '{top}', which could not be imported ({e}). "
            f"Install it with `{hint}`, or choose another backend in the config."
        ) from e


def available(module: str) -> bool:
    """True if ``module`` can be imported (the import is attempted once and cached by Python)."""
    try:
        importlib.import_module(module)
        return True
    except Exception:
        return False
