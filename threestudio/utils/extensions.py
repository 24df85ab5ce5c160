"""Extensions: folders with an ``__init__.py`` whose modules register classes.

Every folder in the repository's ``custom/`` with an ``__init__.py`` is imported at start-up, and so is every folder
given with ``--extensions``. A folder that fails to import stops the run with its path and traceback; none is
skipped silently. Folders whose name ends in ``_disabled`` are skipped (and logged).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import time
import traceback
from typing import List, Optional, Sequence

from threestudio.utils.log import debug, info

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the folder of auto-loaded extensions; THREESTUDIO_CUSTOM_DIR points elsewhere (e.g. with a non-editable install)
CUSTOM_DIR = os.path.join(REPO_ROOT, "custom")


def custom_dir() -> str:
    return os.environ.get("THREESTUDIO_CUSTOM_DIR") or CUSTOM_DIR


class ExtensionImportError(ImportError):
    pass


def _module_name(folder: str, namespace: str) -> str:
    base = re.sub(r"\W", "_", os.path.basename(os.path.normpath(folder)))
    return f"{namespace}.{base}"


def _ensure_namespace(namespace: str, path: str) -> None:
    if namespace not in sys.modules:
        import types

        mod = types.ModuleType(namespace)
        mod.__path__ = [path]  # type: ignore[attr-defined]
        sys.modules[namespace] = mod


def import_extension(folder: str, namespace: str = "threestudio_extensions") -> str:
    """Import one extension folder as a package. Returns its module name; raises ExtensionImportError."""
    folder = os.path.abspath(folder)
    init = os.path.join(folder, "__init__.py")
    if not os.path.isfile(init):
        raise ExtensionImportError(
            f"Extension folder {folder} has no __init__.py; an extension is a Python package whose __init__.py "
            f"imports the modules that register its classes."
        )
    name = _module_name(folder, namespace)
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == init:
        return name
    _ensure_namespace(namespace, os.path.dirname(folder))
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[folder])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    t0 = time.time()
    try:
        spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[name]
        tb = traceback.format_exc()
        raise ExtensionImportError(
            f"Extension {folder} failed to import, so the run stops here (fix it, or rename the folder to "
            f"'{os.path.basename(folder)}_disabled' to skip it).\n{tb}"
        ) from e
    debug(f"imported extension {folder} as {name} in {time.time() - t0:.2f}s")
    return name


def discover_custom(folder: Optional[str] = None) -> List[str]:
    folder = folder or custom_dir()
    if not os.path.isdir(folder):
        return []
    out = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if not os.path.isdir(path) or entry.startswith((".", "__")):
            continue
        if entry.endswith("_disabled"):
            info(f"skipping disabled extension {path}")
            continue
        if os.path.isfile(os.path.join(path, "__init__.py")):
            out.append(path)
    return out


def load_extension_folders(folders: Sequence[str], include_custom: bool = False) -> List[str]:
    """Import ``custom/*`` (if asked) and then each folder in ``folders``; return the module names."""
    names = []
    if include_custom:
        for path in discover_custom():
            names.append(import_extension(path, namespace="custom"))
    for folder in folders:
        if not os.path.isdir(folder):
            raise ExtensionImportError(f"--extensions {folder}: no such folder.")
        names.append(import_extension(folder))
    return names
