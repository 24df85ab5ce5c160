"""The module registry: ``register("name")`` decorates a class, ``find("name")`` returns it.

Every registered class belongs to a *family* (system, data, geometry, ...). The family comes from the base class:
each family's base class sets ``__threestudio_family__``, and subclasses inherit it. Classes written for
threestudio's API that derive from a generic base (``BaseObject``) get their family from their registered name
(``...-guidance``, ``...-prompt-processor``) or from ``register(name, family=...)``.

Lookups are lazy: :data:`threestudio._manifest.MANIFEST` maps every built-in registered name to the module and class
that register it (``"threestudio.models.geometry.implicit_volume:ImplicitVolume"``), so ``find(name)`` imports only
that module (and what it imports), not every module with diffusers and friends. Names registered by extensions
(``custom/``, ``--extensions``, any ``@threestudio.register``) are found as before; a name that is neither
registered nor in the manifest imports every built-in module once, then fails with the family's list of names.
The manifest is generated, never edited by hand (a test fails when it is stale):

    python -m threestudio.utils.manifest --write     (--check: exit 1 if stale)
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import pkgutil
import threading
from typing import Dict, List, Optional, Sequence, Tuple, Type

FAMILIES: Tuple[str, ...] = (
    "system",
    "data",
    "geometry",
    "material",
    "background",
    "renderer",
    "guidance",
    "prompt-processor",
    "exporter",
    "objective",
)
OTHER = "other"

# name suffixes used when the base class does not say (threestudio-style classes derived from BaseObject)
_NAME_HINTS: Tuple[Tuple[str, str], ...] = (
    ("prompt-processor", "prompt-processor"),
    ("guidance", "guidance"),
    ("exporter", "exporter"),
    ("datamodule", "data"),
    ("system", "system"),
    ("renderer", "renderer"),
    ("material", "material"),
    ("background", "background"),
)

_modules: Dict[str, type] = {}
_families: Dict[str, str] = {}
_lock = threading.RLock()
_builtins_loaded = False
BUILTIN_PACKAGES: Tuple[str, ...] = ("threestudio.models", "threestudio.systems", "threestudio.data")
MANIFEST_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_manifest.py")
WRITE_MANIFEST_COMMAND = "python -m threestudio.utils.manifest --write"


class RegistryError(LookupError):
    """A registry lookup or registration failed. The message says what was asked, by whom, and what exists."""

    def __str__(self) -> str:  # LookupError would repr() the message with quotes
        return str(self.args[0]) if self.args else ""


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def family_of(cls: type, name: str = "", explicit: Optional[str] = None) -> str:
    """The family of a class: explicit, else from its base classes, else from its registered name."""
    if explicit is not None:
        if explicit not in FAMILIES and explicit != OTHER:
            raise RegistryError(f"Unknown family '{explicit}'; the families are: {', '.join(FAMILIES)}.")
        return explicit
    fam = getattr(cls, "__threestudio_family__", None)
    if fam:
        return fam
    for base in cls.__mro__:
        if base.__name__ == "LightningDataModule":
            return "data"
        if base.__name__ == "LightningModule":
            return "system"
    lowered = name.lower()
    for suffix, fam in _NAME_HINTS:
        if lowered.endswith(suffix) or f"{suffix}-" in lowered:
            return fam
    return OTHER


def register(name: str, family: Optional[str] = None):
    """Class decorator: ``@threestudio.register("implicit-volume")``.

    A name can be registered once. Registering a second class under a taken name fails and names both classes.
    """
    if not isinstance(name, str) or not name:
        raise RegistryError(f"threestudio.register needs a non-empty string name, got {name!r}.")

    def decorator(cls: type) -> type:
        with _lock:
            fam = family_of(cls, name, family)
            old = _modules.get(name)
            builtin = _manifest().get(name)
            if old is None and builtin is not None and builtin != _manifest_entry(cls):
                # a built-in name not imported yet (lookups are lazy): still taken
                raise RegistryError(
                    f"Cannot register {_qualified(cls)} as '{name}': that name is already registered by "
                    f"{builtin.replace(':', '.')} (built in). Names are global; prefix yours with your "
                    f"extension's name, e.g. 'myext-{name}'."
                )
            if old is not None and _qualified(old) != _qualified(cls):
                raise RegistryError(
                    f"Cannot register {_qualified(cls)} as '{name}': that name is already registered by "
                    f"{_qualified(old)} ({_families[name]}). Names are global; prefix yours with your "
                    f"extension's name, e.g. 'myext-{name}'."
                )
            # the same class registered again (a module imported twice) simply replaces the old entry
            _modules[name] = cls
            _families[name] = fam
            cls.registered_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def load_builtin_modules() -> None:
    """Import every module of threestudio.models, threestudio.systems and threestudio.data so they register."""
    global _builtins_loaded
    with _lock:
        if _builtins_loaded:
            return
        _builtins_loaded = True
        for pkg_name in BUILTIN_PACKAGES:
            pkg = importlib.import_module(pkg_name)
            for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
                importlib.import_module(info.name)


# ------------------------------------------------------------------------------------------------ the manifest
def _manifest() -> Dict[str, str]:
    """The checked-in manifest (registered name -> "module:Class"); empty if the file is missing."""
    try:
        from threestudio._manifest import MANIFEST
    except ImportError:  # pragma: no cover - a checkout without the generated file: everything is imported
        return {}
    return MANIFEST


def _manifest_entry(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_for(name: str) -> None:
    """Make ``name`` registered if it can be: import the module the manifest names, else every built-in module."""
    entry = _manifest().get(name)
    if entry is not None:
        importlib.import_module(entry.partition(":")[0])
    if name not in _modules:
        load_builtin_modules()


def generate_manifest() -> Dict[str, str]:
    """Registered name -> "module:Class" of every built-in module (imports them all), sorted by name."""
    load_builtin_modules()
    with _lock:
        out = {n: _manifest_entry(c) for n, c in _modules.items()
               if c.__module__.startswith(tuple(p + "." for p in BUILTIN_PACKAGES))}
    return dict(sorted(out.items()))


def render_manifest(manifest: Dict[str, str]) -> str:
    """The text of ``threestudio/_manifest.py`` for ``manifest``."""
    lines = [
        f'"""Generated by ``{WRITE_MANIFEST_COMMAND}``; do not edit.',
        "",
        "Registered name -> the module that registers it and the class, so that a registry lookup imports only that",
        'module (see :mod:`threestudio.registry`)."""',
        "",
        "from typing import Dict",
        "",
        "MANIFEST: Dict[str, str] = {",
    ]
    lines += [f"    {json.dumps(name)}: {json.dumps(entry)}," for name, entry in manifest.items()]
    lines += ["}", ""]
    return "\n".join(lines)


def list_modules(family: Optional[str] = None) -> List[str]:
    """Registered names, optionally of one family, sorted."""
    load_builtin_modules()
    return sorted(n for n, f in _families.items() if family is None or f == family)


def nearest(name: str, candidates: Sequence[str], n: int = 3) -> List[str]:
    """Close matches for a misspelt name (difflib ratio, then substring matches)."""
    out = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    if len(out) < n:
        for c in sorted(candidates):
            if c not in out and (name in c or c in name) and len(out) < n:
                out.append(c)
    return out


def _format_choices(names: Sequence[str], limit: int = 12) -> str:
    if not names:
        return "(none registered)"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _lookup(name: str, family: Optional[str], key: Optional[str]) -> type:
    where = f" (asked for by config key '{key}')" if key else ""
    if name not in _modules:
        pool = list_modules(family) if family else list_modules()
        close = nearest(name, pool)
        fam_txt = f"{family} module" if family else "module"
        hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
        raise RegistryError(
            f"Unknown {fam_txt} '{name}'{where}.{hint} Registered {family or 'module'} names: "
            f"{_format_choices(pool)}. If it comes from an extension, check that the extension folder is in "
            f"custom/ or passed with --extensions."
        )
    fam = _families[name]
    if family is not None and fam != family and fam != OTHER:
        pool = list_modules(family)
        close = nearest(name, pool)
        hint = f" Nearest {family} names: {', '.join(repr(c) for c in close)}." if close else ""
        slot = f"config key '{key}'" if key else "this slot"
        raise RegistryError(
            f"'{name}' is a {fam} module, but {slot} needs a {family} module.{hint} "
            f"Registered {family} names: {_format_choices(pool)}."
        )
    return _modules[name]


def find(name: str, family: Optional[str] = None, key: Optional[str] = None) -> type:
    """Return the class registered as ``name``.

    ``family`` restricts the lookup (a name of another family is an error); ``key`` is the config key that asked,
    used in error messages. As in threestudio, ``"main:mixin1,mixin2"`` builds a class that mixes the registered
    classes ``mixin1`` and ``mixin2`` into ``main``.
    """
    if not isinstance(name, str) or not name:
        where = f" at config key '{key}'" if key else ""
        raise RegistryError(f"Expected a registered module name (a non-empty string){where}, got {name!r}.")
    for part in ([name.split(":", 1)[0]] + name.split(":", 1)[1].split(",")) if ":" in name else [name]:
        part = part.strip()
        if part and part not in _modules:
            _import_for(part)
    with _lock:
        if ":" in name:
            main_name, subs = name.split(":", 1)
            main = _lookup(main_name, family, key)
            mixins = [_lookup(s.strip(), None, key) for s in subs.split(",") if s.strip()]
            composed: Type = type(name.replace(":", "_").replace(",", "_"), tuple(mixins) + (main,), {})
            return composed
        return _lookup(name, family, key)


def _unregister(name: str) -> None:
    """Remove a name (tests use this to clean up temporary registrations)."""
    with _lock:
        _modules.pop(name, None)
        _families.pop(name, None)

