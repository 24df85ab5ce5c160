"""The registry's manifest (``threestudio/_manifest.py``): regenerate it or check that it is current.

    python -m threestudio.utils.manifest --write    # after adding, renaming or moving a registered class
    python -m threestudio.utils.manifest --check    # exit 1 if the checked-in file is stale

See :mod:`threestudio.registry` for what the manifest is for.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    from threestudio.registry import MANIFEST_FILE, WRITE_MANIFEST_COMMAND, generate_manifest, render_manifest

    ap = argparse.ArgumentParser(prog="python -m threestudio.utils.manifest", description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help=f"regenerate {MANIFEST_FILE}")
    mode.add_argument("--check", action="store_true", help="exit 1 if the checked-in manifest is stale")
    args = ap.parse_args(argv)
    manifest = generate_manifest()
    fresh = render_manifest(manifest)
    if args.write:
        with open(MANIFEST_FILE, "w", encoding="utf-8") as f:
            f.write(fresh)
        print(f"wrote {MANIFEST_FILE} ({len(manifest)} names)")
        return 0
    try:
        with open(MANIFEST_FILE, encoding="utf-8") as f:
            current = f.read()
    except FileNotFoundError:
        current = ""
    if fresh != current:
        print(f"{MANIFEST_FILE} is stale: run {WRITE_MANIFEST_COMMAND}", file=sys.stderr)
        return 1
    print(f"{MANIFEST_FILE} is up to date ({len(manifest)} names)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
