#!/usr/bin/env python
"""Render the procedural quick-start scene into a nerfstudio/Blender-style dataset.

    python scripts/make_synthetic_scene.py --out load/scenes/quickstart [--n-train 100 --n-test 20 --res 128]

The logic lives in :mod:`threestudio.data.synthetic_scene` (layout, scene and camera rig are described there). A
folder that already holds a complete dataset with the same parameters is left as it is (use --force to redo it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument("--n-train", type=int, default=100, help="training views (default 100)")
    parser.add_argument("--n-test", type=int, default=20, help="held-out turntable views (default 20)")
    parser.add_argument("--res", type=int, default=128, help="image width and height in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the camera spiral and scene jitter")
    parser.add_argument("--supersample", type=int, default=2, help="sub-pixel rays per axis (default 2: 2x2)")
    parser.add_argument("--distance", type=float, default=2.0, help="camera distance from the origin")
    parser.add_argument("--fov", type=float, default=45.0, help="horizontal field of view in degrees")
    parser.add_argument("--force", action="store_true", help="render even if a complete dataset is there")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from threestudio.data.synthetic_scene import make_scene

    start = time.time()
    try:
        result = make_scene(args.out, n_train=args.n_train, n_test=args.n_test, resolution=args.res,
                            seed=args.seed, supersample=args.supersample, distance=args.distance,
                            fov_x_deg=args.fov, progress=not args.no_progress, force=args.force)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.skipped:
        print(f"{args.out}: a complete dataset with these parameters is already there (--force to redo it).")
    else:
        print(f"{args.out}: wrote {len(result.files)} files in {time.time() - start:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
