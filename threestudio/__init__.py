"""threestudio: text-guided 3D generation from swappable, config-composed modules.

``import threestudio`` is light: it sets up the registry and logging only. A built-in module registers itself when
it is first needed (:func:`find` imports the one module that registers the name, from the generated manifest
``threestudio/_manifest.py``) or when :func:`load_builtin_modules` is called.
"""

from __future__ import annotations

__version__ = "0.3.0"

from threestudio.registry import (  # noqa: E402,F401
    FAMILIES,
    RegistryError,
    find,
    family_of,
    list_modules,
    load_builtin_modules,
    register,
)
from threestudio.utils.log import debug, info, warn  # noqa: E402,F401


def load_extensions(*folders: str) -> list:
    """Import extension folders (each a package with an ``__init__.py``), as ``launch.py`` does at start-up."""
    from threestudio.utils.extensions import load_extension_folders

    return load_extension_folders(list(folders))
