#!/usr/bin/env python
"""Pose accuracy of scripts/process_capture.py: our pycolmap SfM on the fox photos against their given COLMAP poses.

Runs the capture pipeline (:func:`threestudio.data.capture.process_capture`, what ``process_capture.py`` runs) on
``FOX/images`` (50 photos, 1080x1920) into ``--out`` (default: a temporary folder, deleted afterwards), then compares
the poses in its ``transforms.json`` with ``FOX/transforms.json`` (instant-ngp convention: camera-to-world, OpenGL
camera axes, an arbitrary world frame, no applied_transform), frames matched by file name. Both files use OpenGL
camera axes, so the comparison is direct after a least-squares similarity that maps our camera centres onto the
given ones (:func:`threestudio.data.capture.pose_errors`): rotation errors in degrees, position errors as a fraction
of the scene size (the largest distance of a given camera centre from their centroid). Prints them with the time per
stage; ``--json`` writes everything.

    python scripts/bench/bench_capture_poses.py [--fox ../shared/data/fox] [--max-image-size 0] \\
        [--matcher exhaustive] [--out .gpu/fox_sfm] [--json poses.json]

FOX defaults to $THREESTUDIO_FOX, else ../shared/data/fox next to the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def default_fox() -> str:
    return os.environ.get("THREESTUDIO_FOX") or os.path.join(os.path.dirname(REPO), "shared", "data", "fox")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fox", default=default_fox(), help="folder with images/ and transforms.json (default: "
                   "$THREESTUDIO_FOX or ../shared/data/fox)")
    p.add_argument("--out", default=None, help="output folder to keep (replaced if it holds an earlier run); "
                   "default: a temporary folder, deleted at the end")
    p.add_argument("--max-image-size", type=int, default=0,
                   help="longer side of the images the SfM runs on (default 0: full resolution)")
    p.add_argument("--matcher", choices=["exhaustive", "sequential"], default="exhaustive")
    p.add_argument("--camera-model", choices=["OPENCV", "OPENCV_FISHEYE"], default="OPENCV")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from threestudio.data.capture import CaptureError, compare_transforms, process_capture

    images, ref = os.path.join(args.fox, "images"), os.path.join(args.fox, "transforms.json")
    if not (os.path.isdir(images) and os.path.isfile(ref)):
        sys.stderr.write(f"bench_capture_poses.py: error: {args.fox} has no images/ and transforms.json "
                         f"(set --fox or THREESTUDIO_FOX)\n")
        return 2
    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.mkdtemp(prefix="fox_sfm_")
        out = os.path.join(tmp, "out")
    cmd = (f"python scripts/process_capture.py {images} {out} --matcher {args.matcher} --camera-model "
           f"{args.camera_model} --max-image-size {args.max_image_size}" + (" --overwrite" if args.out else ""))
    print(f"# equivalent command: {cmd}", flush=True)
    import pycolmap

    t0 = time.perf_counter()
    try:
        summary = process_capture(images, out, matcher=args.matcher, camera_model=args.camera_model,
                                  max_image_size=args.max_image_size or None, overwrite=args.out is not None,
                                  progress=not args.no_progress)
    except CaptureError as e:
        sys.stderr.write(f"bench_capture_poses.py: reconstruction failed: {e}\n")
        return 1
    wall = time.perf_counter() - t0
    err = compare_transforms(os.path.join(out, "transforms.json"), ref)
    with open(ref) as f:
        given = json.load(f)
    cam = summary["camera"]
    scale_px = cam["w"] / float(given["w"])  # our images may be downscaled: compare intrinsics in given pixels
    intr = {k: (cam[k] / scale_px, float(given[k])) for k in ("fl_x", "fl_y", "cx", "cy") if k in given}

    t = summary["timings_s"]
    lines = [
        f"fox: {summary['num_registered']}/{summary['num_images']} images registered, {summary['num_points3D']} "
        f"points, mean reprojection error {summary['mean_reprojection_error_px']:.3f} px, images "
        f"{cam['w']}x{cam['h']}",
        f"compared frames: {err['num_frames']} (given but not registered: {err['missing_in_est'] or 'none'})",
        f"rotation error (deg, after similarity alignment of camera centres): median "
        f"{err['rot_err_deg_median']:.3f}  mean {err['rot_err_deg_mean']:.3f}  max {err['rot_err_deg_max']:.3f}",
        f"relative rotation error over camera pairs (deg, no alignment): median "
        f"{err['pair_rot_err_deg_median']:.3f}  max {err['pair_rot_err_deg_max']:.3f}",
        f"position error (% of scene size = {err['scene_size']:.3f}, max camera distance from the camera centroid): "
        f"median {100 * err['pos_err_rel_median']:.3f}%  mean {100 * err['pos_err_rel_mean']:.3f}%  "
        f"max {100 * err['pos_err_rel_max']:.3f}%",
        "intrinsics (ours in the given pixels vs given): " + ", ".join(f"{k} {a:.1f} vs {b:.1f}"
                                                                       for k, (a, b) in intr.items()),
        "time: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()) + f" (wall {wall:.1f} s, "
        f"{os.cpu_count()} CPU cores, pycolmap {pycolmap.__version__})",
    ]
    print("\n".join(lines))
    if args.json:
        result: Dict[str, Any] = {
            "command": cmd, "fox": os.path.abspath(args.fox), "out": os.path.abspath(out) if args.out else None,
            "max_image_size": args.max_image_size, "matcher": args.matcher, "summary": summary, "pose_errors": err,
            "intrinsics_vs_given": intr, "wall_s": wall, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "pycolmap": pycolmap.__version__,
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
