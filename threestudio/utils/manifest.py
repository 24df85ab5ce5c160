"""The registry's manifests: regenerate them or check that they are current.

    python -m threestudio.utils.manifest --write    # after adding, renaming or moving a registered class or Config
    python -m threestudio.utils.manifest --check    # exit 1 if a checked-in manifest is stale

Without ``--extension`` this covers ``threestudio/_manifest.py`` and the ``_manifest.py`` of every ``custom/``
extension that has one. ``--extension DIR`` (repeatable) covers that extension folder instead, and writes its first
manifest too: after that, its ``__init__.py`` can call ``threestudio.registry.add_manifest(__name__)`` instead of
importing its modules. See :mod:`threestudio.registry` for what the manifests are for.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence, Tuple


def targets(extensions: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    """(manifest file, extension package or None for the built-in one) to write or check; imports the extensions."""
    from threestudio.registry import MANIFEST_FILE, MANIFEST_NAME
    from threestudio.utils.extensions import custom_dir, discover_custom, import_extension

    if extensions:
        folders, out = [os.path.abspath(d) for d in extensions], []
    else:
        folders = [d for d in discover_custom() if os.path.isfile(os.path.join(d, MANIFEST_NAME + ".py"))]
        out = [(MANIFEST_FILE, None)]
    for folder in folders:  # imported as launch.py imports them (custom/* as custom.<name>)
        in_custom = os.path.dirname(folder) == os.path.abspath(custom_dir())
        package = import_extension(folder, namespace="custom") if in_custom else import_extension(folder)
        out.append((os.path.join(folder, MANIFEST_NAME + ".py"), package))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    from threestudio.registry import WRITE_MANIFEST_COMMAND, generate_manifest, render_manifest

    ap = argparse.ArgumentParser(prog="python -m threestudio.utils.manifest", description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the manifests that are stale")
    mode.add_argument("--check", action="store_true", help="exit 1 if a checked-in manifest is stale")
    ap.add_argument("--extension", action="append", default=[], metavar="DIR",
                    help="an extension folder (repeatable): its DIR/_manifest.py instead of the built-in ones")
    args = ap.parse_args(argv)
    stale = 0
    for path, package in targets(args.extension):
        manifest = generate_manifest(package)
        fresh = render_manifest(manifest, package)
        try:
            with open(path, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = ""
        if fresh == current:
            print(f"{path} is up to date ({len(manifest.classes)} names)")
        elif args.write:
            with open(path, "w", encoding="utf-8") as f:
                f.write(fresh)
            print(f"wrote {path} ({len(manifest.classes)} names)")
        else:
            extension = "" if package is None else f" --extension {os.path.dirname(path)}"
            print(f"{path} is stale: run {WRITE_MANIFEST_COMMAND}{extension}", file=sys.stderr)
            stale += 1
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
