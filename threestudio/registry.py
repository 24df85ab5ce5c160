"""The module registry: ``register("name")`` decorates a class, ``find("name")`` returns it.

Every registered class belongs to a *family* (system, data, geometry, ...). The family comes from the base class:
each family's base class sets ``__threestudio_family__``, and subclasses inherit it. Classes written for
threestudio's API that derive from a generic base (``BaseObject``) get their family from their registered name
(``...-guidance``, ``...-prompt-processor``) or from ``register(name, family=...)``.

Lookups are lazy: :data:`threestudio._manifest.MANIFEST` maps every built-in registered name to the module and class
that register it (``"threestudio.models.geometry.implicit_volume:ImplicitVolume"``), so ``find(name)`` imports only
that module (and what it imports), not every module with diffusers and friends. The manifest also records each
name's family and where its class's ``Config`` dataclass is defined, so :func:`find_config` (what config validation
asks) imports only that light module: no Lightning, no diffusers. An extension package can be lazy too: its
``__init__.py`` calls :func:`add_manifest` with its own generated ``_manifest.py`` (the ``custom/`` extensions do)
instead of importing its modules. Names registered by other extensions (``--extensions`` folders that import their
modules, any ``@threestudio.register``) are found as before; a name that is neither registered nor in a manifest
fails at once with the family's names from the manifests and the registry (nothing imported; only a stale manifest
entry, or a checkout without the built-in manifest, makes a lookup import every built-in module). Manifests are
generated, never edited by hand (a test fails when one is stale):

    python -m threestudio.utils.manifest --write     (--check: exit 1 if stale; --extension DIR: that folder's)
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import json
import os
import pkgutil
import sys
import threading
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Type

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


class Lazy(NamedTuple):
    """What a manifest says about a registered name, before the module that registers it is imported."""

    target: str  # "module:Class"
    family: str
    config: Optional[str]  # "module:Qual.Name" of the class's Config, None if it has none (or it is not importable)
    package: str  # whose manifest it is: "threestudio", or an extension package (add_manifest)


_modules: Dict[str, type] = {}
_families: Dict[str, str] = {}
_lazy: Dict[str, Lazy] = {}  # names of extension manifests (the built-in manifest is read from threestudio._manifest)
_lock = threading.RLock()
_builtins_loaded = False
BUILTIN_PACKAGES: Tuple[str, ...] = ("threestudio.models", "threestudio.systems", "threestudio.data")
MANIFEST_NAME = "_manifest"  # the generated module, in threestudio/ and in each lazy extension package
MANIFEST_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), MANIFEST_NAME + ".py")
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
            taken = _manifest().get(name)
            by = "built in"
            if taken is None and name in _lazy:
                taken, by = _lazy[name].target, f"extension {_lazy[name].package}, not imported yet"
            if old is None and taken is not None and taken != _manifest_entry(cls):
                # a name of a manifest not imported yet (lookups are lazy): still taken
                raise RegistryError(
                    f"Cannot register {_qualified(cls)} as '{name}': that name is already registered by "
                    f"{taken.replace(':', '.')} ({by}). Names are global; prefix yours with your "
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
    """Import every module of threestudio.models, threestudio.systems and threestudio.data so they register, and
    every module that an extension's manifest (:func:`add_manifest`) names and that is not imported yet."""
    global _builtins_loaded
    with _lock:
        if not _builtins_loaded:
            _builtins_loaded = True
            for pkg_name in BUILTIN_PACKAGES:
                _import_tree(pkg_name)
        for module in sorted({e.target.partition(":")[0] for n, e in _lazy.items() if n not in _modules}):
            importlib.import_module(module)


def _import_tree(pkg_name: str) -> None:
    """Import a package and every module below it."""
    pkg = importlib.import_module(pkg_name)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
        importlib.import_module(info.name)


# ------------------------------------------------------------------------------------------------ the manifests
class Manifest(NamedTuple):
    """What a manifest file holds, per registered name: the class, its family, and its Config dataclass."""

    classes: Dict[str, str]  # name -> "module:Class"
    families: Dict[str, str]  # name -> family
    configs: Dict[str, str]  # name -> "module:Qual.Name" of the class's Config (names without one are left out)


def _manifest() -> Dict[str, str]:
    """The checked-in built-in manifest (registered name -> "module:Class"); empty if the file is missing."""
    return _builtin_manifest().classes


def _builtin_manifest() -> Manifest:
    try:
        from threestudio import _manifest as m
    except ImportError:  # pragma: no cover - a checkout without the generated file: everything is imported
        return Manifest({}, {}, {})
    return Manifest(m.MANIFEST, getattr(m, "FAMILY", {}), getattr(m, "CONFIG", {}))


def _manifest_entry(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _lazy_entry(name: str) -> Optional[Lazy]:
    """What a manifest (built in, else an extension's) says about a name that may not be imported yet."""
    builtin = _builtin_manifest()
    target = builtin.classes.get(name)
    if target is not None:
        return Lazy(target, builtin.families.get(name, OTHER), builtin.configs.get(name), "threestudio")
    return _lazy.get(name)


class RegistryImportError(RegistryError):
    """The module an extension's manifest names for a registered name failed to import (the extension's own code)."""


def _import_for(name: str) -> None:
    """Make ``name`` registered if it can be: import the module a manifest names, else every built-in module."""
    entry = _lazy_entry(name)
    if entry is not None:
        module = entry.target.partition(":")[0]
        if entry.package == "threestudio":
            importlib.import_module(module)
        else:
            _import_extension_module(name, module, entry.package)
    if name not in _modules and (entry is not None or not _manifest()):
        load_builtin_modules()  # a stale manifest entry, or no built-in manifest: import everything once


def _known(family: Optional[str] = None) -> List[str]:
    """Registered names and the names the manifests list, optionally of one family, sorted; imports nothing (the
    choices an unknown-name error gives, without importing every module to list them)."""
    builtin = _builtin_manifest()
    fams = {n: builtin.families.get(n, OTHER) for n in builtin.classes}
    fams.update({n: e.family for n, e in _lazy.items()})
    fams.update(_families)
    return sorted(n for n, f in fams.items() if family is None or f == family)


def _import_extension_module(name: str, module: str, package: str) -> None:
    """Import an extension's module on the first lookup of ``name``; its failure becomes one
    :class:`RegistryImportError` naming the name, the module, the file and line, and the way out (as a failing
    extension folder does at start-up). A missing optional dependency keeps its own message."""
    from threestudio.utils.imports import MissingDependencyError

    try:
        importlib.import_module(module)
    except MissingDependencyError:
        raise
    except Exception as e:
        import traceback

        frames = [f for f in traceback.extract_tb(e.__traceback__) if "importlib" not in f.filename]
        where, text = "", str(e)
        if isinstance(e, SyntaxError) and e.filename:
            where, text = f" ({e.filename}, line {e.lineno})", str(e.msg)
        elif frames:
            where = f" ({frames[-1].filename}, line {frames[-1].lineno})"
        root = sys.modules.get(package)
        folder = os.path.dirname(getattr(root, "__file__", "") or "") or package
        raise RegistryImportError(
            f"'{name}' is registered by {module}, which failed to import: {type(e).__name__}: {text}{where}. Fix that "
            f"module (or rename the folder {folder} to '{os.path.basename(folder)}_disabled' to skip the "
            f"extension); --verbose shows the traceback."
        ) from e


def _resolve(path: str) -> Any:
    """The object at "module:Qual.Name" (imports the module)."""
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def add_manifest(package: str) -> int:
    """Register the names of an extension package lazily, from its generated ``<package>._manifest`` (see the module
    docstring): ``find`` imports a name's module when the name is first asked for. Call it from the package's
    ``__init__.py`` as ``add_manifest(__name__)`` instead of importing the modules that register classes. Returns
    the number of names; a name already taken by another class fails as :func:`register` does."""
    try:
        m = importlib.import_module(f"{package}.{MANIFEST_NAME}")
    except ModuleNotFoundError as e:
        if e.name != f"{package}.{MANIFEST_NAME}":
            raise
        from threestudio.utils.log import warn

        warn(f"{package} has no {MANIFEST_NAME}.py yet: importing all its modules (write it with "
             f"`{WRITE_MANIFEST_COMMAND} --extension {os.path.dirname(importlib.import_module(package).__file__)}`).")
        _import_tree(package)
        return 0

    def absolute(path: str) -> str:
        module, _, qualname = path.partition(":")
        return f"{importlib.util.resolve_name(module, package) if module.startswith('.') else module}:{qualname}"

    families, configs = getattr(m, "FAMILY", {}), getattr(m, "CONFIG", {})
    with _lock:
        for name, target in m.MANIFEST.items():
            entry = Lazy(absolute(target), families.get(name, OTHER),
                         absolute(configs[name]) if name in configs else None, package)
            taken = _manifest().get(name)
            if taken is None and name in _modules:
                taken = _manifest_entry(_modules[name])
            if taken is None and name in _lazy:
                taken = _lazy[name].target
            if taken is not None and taken != entry.target:
                raise RegistryError(
                    f"Cannot register {entry.target.replace(':', '.')} as '{name}' (the manifest of {package}): "
                    f"that name is already registered by {taken.replace(':', '.')}. Names are global; prefix "
                    f"yours with your extension's name, e.g. 'myext-{name}'."
                )
            _lazy[name] = entry
    return len(m.MANIFEST)


def find_config(name: str, family: Optional[str] = None, key: Optional[str] = None) -> Optional[type]:
    """The ``Config`` dataclass of the class registered as ``name`` (None if it has none), importing as little as
    possible: a registered class's ``Config``; for a name in a manifest, only the module that defines the Config
    (the family is checked from the manifest); anything else (a composed "main:mixin" name, an unknown or stale
    name, a wrong family) goes through :func:`find`, with its errors."""
    if isinstance(name, str) and name and ":" not in name and name not in _modules:
        entry = _lazy_entry(name)
        if entry is not None and entry.config and (family is None or entry.family in (family, OTHER)):
            try:
                return _resolve(entry.config)
            except (ImportError, AttributeError):
                pass  # a stale manifest: find() imports what it must and says what is wrong
    return getattr(find(name, family, key), "Config", None)


def class_name(name: str) -> str:
    """The ``__name__`` of the class :func:`find` returns for ``name``, without importing it when a manifest
    knows it (config messages name the class)."""
    if ":" in name:
        return name.replace(":", "_").replace(",", "_")  # the composed class find() builds
    if name in _modules:
        return _modules[name].__name__
    entry = _lazy_entry(name)
    if entry is not None:
        return entry.target.partition(":")[2].rpartition(".")[2]
    return find(name).__name__


def generate_manifest(package: Optional[str] = None) -> Manifest:
    """The manifest of the built-in modules, or of the extension package ``package`` (imported already, e.g.
    ``custom.amortized``; its entries are relative to it: ".system:Class"). Imports every module of it."""
    packages = BUILTIN_PACKAGES if package is None else (package,)
    for pkg_name in packages:
        _import_tree(pkg_name)
    prefixes = tuple(p + "." for p in packages)
    with _lock:
        found = {n: c for n, c in _modules.items() if c.__module__.startswith(prefixes) or c.__module__ == package}

    def path(module: str, qualname: str) -> str:
        if package is not None and (module == package or module.startswith(package + ".")):
            module = "." + module[len(package) + 1:]
        return f"{module}:{qualname}"

    classes, families, configs = {}, {}, {}
    for name in sorted(found):
        cls = found[name]
        classes[name] = path(cls.__module__, cls.__qualname__)
        families[name] = _families[name]
        conf = getattr(cls, "Config", None)
        if isinstance(conf, type) and dataclasses.is_dataclass(conf):
            where = f"{conf.__module__}:{conf.__qualname__}"
            try:
                ok = _resolve(where) is conf
            except (ImportError, AttributeError):
                ok = False
            if ok:  # else (a Config made inside a function, say) validation finds the class itself
                configs[name] = path(conf.__module__, conf.__qualname__)
    return Manifest(classes, families, configs)


def render_manifest(manifest: Manifest, package: Optional[str] = None) -> str:
    """The text of a manifest file (``threestudio/_manifest.py``, or ``<package>/_manifest.py``)."""
    head = f"Generated by ``{WRITE_MANIFEST_COMMAND}``; do not edit."
    body = [
        "Registered name -> the module that registers it and the class (MANIFEST), its family (FAMILY) and where its",
        "Config dataclass is defined (CONFIG): a registry lookup imports only the class's module, config validation",
    ]
    if package is None:
        body.append("only the Config's (see :mod:`threestudio.registry`).")
    else:
        body += ["only the Config's. A leading '.' is relative to this package "
                 "(:func:`threestudio.registry.add_manifest`);",
                 "the manifest of a folder outside custom/ is written with ``--extension DIR`` added."]
    lines = [f'"""{head}', "", *body[:-1], body[-1] + '"""', "", "from typing import Dict", ""]
    for var, table in (("MANIFEST", manifest.classes), ("FAMILY", manifest.families), ("CONFIG", manifest.configs)):
        lines.append(f"{var}: Dict[str, str] = {{")
        lines += [f"    {json.dumps(name)}: {json.dumps(value)}," for name, value in table.items()]
        lines += ["}", ""]
    return "\n".join(lines)


def list_modules(family: Optional[str] = None) -> List[str]:
    """Registered names, optionally of one family, sorted (imports every module that registers one)."""
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
        pool = _known(family)
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
        pool = _known(family)
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
        _lazy.pop(name, None)

