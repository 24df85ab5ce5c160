#!/usr/bin/env python
"""Write N procedural coloured meshes (random unions of the quick-start scene's SDF primitives, shaded vertex
colours, z up) as PLY files into OUT_FOLDER:

    python custom/zero1tog/scripts/make_procedural_meshes.py OUT_FOLDER --n 100 [--seed 0] [--resolution 48]
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=48, help="marching-cubes grid side")
    args = p.parse_args(argv)
    from threestudio.utils.extensions import import_extension

    import_extension(os.path.join(REPO, "custom", "zero1tog"), namespace="custom")
    from custom.zero1tog.meshes import make_procedural_meshes

    paths = make_procedural_meshes(args.out, args.n, args.seed, args.resolution)
    print(f"wrote {len(paths)} meshes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
