#!/usr/bin/env python
"""Render every mesh of MESH_FOLDER and fit its ground-truth splatter image, into OUT.

    python custom/zero1tog/scripts/make_gt_splatters.py MESH_FOLDER OUT [--resolution 128] [--steps 300] \
        [--view-set wonder3d] [--mapping wonder3d] [--n-extra 14] [--n-heldout 4] [--seed 0] [--device cpu]

MESH_FOLDER holds mesh files (OBJ, PLY, GLB, ...; vertex colours or a base-colour texture), read only; OUT must be
new, empty or a folder this tool wrote (complete objects with the same settings are skipped). Procedural test meshes
come from custom/zero1tog/scripts/make_procedural_meshes.py. The layout of OUT is in custom/zero1tog/store.py.
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
    p.add_argument("mesh_folder")
    p.add_argument("out")
    p.add_argument("--resolution", type=int, default=128, help="splatter image side per view")
    p.add_argument("--render-resolution", type=int, default=None, help="render side (default: --resolution)")
    p.add_argument("--steps", type=int, default=300, help="optimisation steps per object")
    p.add_argument("--views-per-step", type=int, default=0, help="supervision views per step (0: all)")
    p.add_argument("--view-set", default="wonder3d", help="wonder3d | zero123pp-v1.1 | zero123pp-v1.2")
    p.add_argument("--mapping", default="wonder3d", help="wonder3d | zero123pp | zero123pp-2dgs")
    p.add_argument("--n-extra", type=int, default=14, help="supervision cameras besides the splatter views")
    p.add_argument("--n-heldout", type=int, default=4, help="evaluation cameras (never used by the fit)")
    p.add_argument("--distance", type=float, default=1.5)
    p.add_argument("--mesh-up", default="+z", help="the files' up axis (+z, +y, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (renders and fit; cuda: gsplat)")
    args = p.parse_args(argv)

    from threestudio.utils.extensions import import_extension

    import_extension(os.path.join(REPO, "custom", "zero1tog"), namespace="custom")
    from custom.zero1tog.gt_fit import FitConfig
    from custom.zero1tog.make_data import MakeConfig, make_dataset
    from custom.zero1tog.splatter import get_mapping
    from custom.zero1tog.views import get_view_set

    try:
        get_mapping(args.mapping)
        get_view_set(args.view_set)
        if args.resolution < 4 or args.steps < 0:
            raise ValueError("--resolution must be >= 4 and --steps >= 0")
        fit = FitConfig(resolution=args.resolution, render_resolution=args.render_resolution, steps=args.steps,
                        views_per_step=args.views_per_step, mapping=args.mapping)
        cfg = MakeConfig(fit=fit, view_set=args.view_set, n_extra=args.n_extra, n_heldout=args.n_heldout,
                         distance=args.distance, mesh_up=args.mesh_up, seed=args.seed)
        import torch

        device = args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        make_dataset(args.mesh_folder, args.out, cfg, show_progress=not args.no_progress, device=device)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
