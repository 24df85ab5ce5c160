"""Render a trained scene into pseudo data for the NeLF student (MobileGen3D's teacher -> student step).

    python custom/mobilegen3d/scripts/make_pseudo_data.py --teacher outputs/nerf-capture/fox@... --out pseudo/fox \
        --n 2000 [--long-side 512] [--scale 8] [--jitter 0.15] [--jitter-deg 3] [--seed 0]

The teacher is any trial of a reconstruction recipe (nerf-capture, gaussian-capture, quickstart, an in2n edit...):
its folder or a checkpoint. ``--n`` pseudo views are drawn between and around the training cameras, plus one view at
each held-out camera (kept out of the student's training: the student is evaluated there against the teacher), all
at the student's output size (long side ``--long-side``, both sides multiples of ``--scale``). The trial is only
read; ``--out`` must be outside it.
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
    p.add_argument("--teacher", required=True, help="a trial folder or checkpoint of a reconstruction recipe")
    p.add_argument("--out", required=True, help="the pseudo-data folder to write (new, outside the trial)")
    p.add_argument("--n", type=int, default=2000, help="pseudo views (plus the held-out cameras)")
    p.add_argument("--long-side", type=int, default=512, help="long side of the student's output, in pixels")
    p.add_argument("--scale", type=int, default=8, help="the student's upsampling (input = output / scale)")
    p.add_argument("--jitter", type=float, default=0.15, help="position jitter, in camera spacings")
    p.add_argument("--jitter-deg", type=float, default=3.0, help="rotation jitter, in degrees")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace a complete pseudo-data folder at --out")
    args = p.parse_args(argv)
    from threestudio.utils.config import ConfigError
    from threestudio.utils.trials import resolve_checkpoint, trial_of_checkpoint

    if args.n < 1 or args.long_side < args.scale or args.scale < 1:
        print("error: need --n >= 1, --scale >= 1 and --long-side >= --scale", file=sys.stderr)
        return 2
    try:
        trial = os.path.realpath(trial_of_checkpoint(resolve_checkpoint(args.teacher, key="--teacher")))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = os.path.realpath(args.out)
    if out == trial or out.startswith(trial + os.sep):
        print(f"error: --out {args.out} is inside the teacher's trial {trial}, which is only read; choose another "
              f"folder", file=sys.stderr)
        return 2
    from custom.mobilegen3d.teacher import make_pseudo_data
    from threestudio.data.multiview import DatasetError

    try:
        info = make_pseudo_data(args.teacher, args.out, args.n, args.long_side, args.scale, args.jitter,
                                args.jitter_deg, args.seed, args.device, overwrite=args.overwrite)
    except (ConfigError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {info['n']} pseudo views + {info['held_out']} held-out views at {info['width']}x{info['height']} "
          f"to {info['out']} (student samples rays from {info['near']:.3g} to {info['far']:.3g}; teacher: "
          f"{info['system']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
