#!/usr/bin/env python
"""Photos or a video -> COLMAP poses (pycolmap) -> a nerfstudio-style transforms.json to train on.

    python scripts/process_capture.py PHOTOS_OR_VIDEO OUT [--matcher exhaustive|sequential]
        [--camera-model OPENCV|OPENCV_FISHEYE] [--fps 2 | --num-frames N] [--max-image-size 1600]
        [--num-downscales 0..3] [--overwrite]

Writes OUT/images (copies of the photos or frames of the video, longer side at most --max-image-size),
OUT/colmap (database.db, sparse/0, colmap.log, summary.json), OUT/transforms.json (OPENCV intrinsics, camera-to-world
OpenGL poses, nerfstudio's applied_transform) and OUT/sparse_pc.ply; optionally OUT/images_2, images_4, images_8.
The input is only read; OUT may not be the input folder or lie inside it. Train with e.g.
``python launch.py --config configs/base/nerf-reconstruction.yaml --train data.dataroot=OUT``.

Needs pycolmap (``pip install pycolmap``; CPU wheels). Exit codes: 0 ok, 1 the reconstruction failed (or pycolmap is
missing), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STAGES = (("images", "copy images"), ("frames", "extract video frames"), ("downscales", "downscaled copies"),
          ("features", "feature extraction"), ("matching", "matching"), ("mapping", "incremental mapping"),
          ("refine", "bundle adjustment (intrinsics)"), ("export", "write transforms.json, ply"))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2 (argparse prints usage too; keep it short)
        sys.stderr.write(f"process_capture.py: error: {message} (see --help)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__.split("\n\n")[0],
                epilog=__doc__.split("\n\n", 2)[2] if __doc__.count("\n\n") >= 2 else None,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="PHOTOS_OR_VIDEO",
                   help="a folder of photos (.jpg/.png/.tif/.bmp, top level only, taken in order for --matcher "
                        "sequential) or a video file (.mp4/.mov/.mkv/...)")
    p.add_argument("out", metavar="OUT", help="output folder (created; must not be inside the input folder)")
    p.add_argument("--matcher", choices=["exhaustive", "sequential"], default=None,
                   help="feature matching: 'exhaustive' (all pairs; photos, up to a few hundred) or 'sequential' "
                        "(neighbours in file-name order; videos). Default: sequential for a video, else exhaustive")
    p.add_argument("--camera-model", choices=["OPENCV", "OPENCV_FISHEYE"], default="OPENCV",
                   help="COLMAP camera model, one camera shared by all images (default OPENCV: fx, fy, cx, cy, "
                        "k1, k2, p1, p2)")
    p.add_argument("--fps", type=float, default=2.0,
                   help="video only: frames kept per second of video (default 2)")
    p.add_argument("--num-frames", type=int, default=None,
                   help="video only: keep this many frames spread evenly over the video instead of --fps")
    p.add_argument("--max-image-size", type=int, default=1600,
                   help="longer side of the images written to OUT/images, in pixels; larger photos/frames are "
                        "downscaled and the SfM runs on them (default 1600; 0 keeps the full resolution)")
    p.add_argument("--num-downscales", type=int, default=0, choices=[0, 1, 2, 3],
                   help="also write OUT/images_2, images_4, images_8 (half, quarter, eighth size), like "
                        "ns-process-data (default 0)")
    p.add_argument("--min-registered", type=float, default=0.5,
                   help="fail (exit 1) if fewer than this fraction of the images are registered (default 0.5)")
    p.add_argument("--no-refine-intrinsics", action="store_true",
                   help="skip the final bundle adjustment that also refines the principal point")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier run in OUT (images*, colmap, transforms.json, "
                        "sparse_pc.ply; other files in OUT are kept)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{int(s // 60)} min {s % 60:.0f} s"


def print_summary(summary: Dict[str, Any]) -> None:
    rows = []
    n, k = summary["num_images"], summary["num_registered"]
    rows.append(("images registered", f"{k} / {n} ({100.0 * k / n:.0f}%)"))
    if summary["unregistered"]:
        un = summary["unregistered"]
        rows.append(("not registered", ", ".join(un[:8]) + (f", ... ({len(un)})" if len(un) > 8 else "")))
    rows.append(("3D points", str(summary["num_points3D"])))
    rows.append(("mean reprojection error", f"{summary['mean_reprojection_error_px']:.3f} px"))
    rows.append(("mean track length", f"{summary['mean_track_length']:.2f}"))
    cam = summary["camera"]
    if "fl_x" in cam:  # one shared camera
        rows.append(("camera", f"{cam['camera_model']} {cam['w']}x{cam['h']}, f {cam['fl_x']:.1f}/{cam['fl_y']:.1f}, "
                               f"c {cam['cx']:.1f}/{cam['cy']:.1f}"))
    else:
        rows.append(("camera", f"{cam['camera_model']}, one per image"))
    for key, label in STAGES:
        if key in summary["timings_s"]:
            rows.append((f"time: {label}", _fmt_s(summary["timings_s"][key])))
    rows.append(("time: total", _fmt_s(summary["timings_s"]["total"])))
    rows.append(("transforms", os.path.join(summary["output"], "transforms.json")))
    width = max(len(r[0]) for r in rows)
    print(f"capture processed: {summary['output']}")
    print("\n".join(f"  {a:<{width}}  {b}" for a, b in rows), flush=True)


def run(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Parse ``argv`` and process the capture; returns the summary dict. Raises the library's exceptions
    (:class:`~threestudio.data.capture.CaptureInputError`, ``ReconstructionError``, ``MissingDependencyError``)."""
    args = build_parser().parse_args(argv)
    from threestudio.data.capture import CaptureInputError, process_capture

    if args.fps is not None and not args.fps > 0:
        raise CaptureInputError(f"--fps must be > 0, got {args.fps}.")
    if args.num_frames is not None and args.num_frames < 1:
        raise CaptureInputError(f"--num-frames must be >= 1, got {args.num_frames}.")
    if args.max_image_size < 0:
        raise CaptureInputError(f"--max-image-size must be >= 0, got {args.max_image_size}.")
    if not 0 < args.min_registered <= 1:
        raise CaptureInputError(f"--min-registered must be in (0, 1], got {args.min_registered}.")
    return process_capture(args.input, args.out, matcher=args.matcher, camera_model=args.camera_model, fps=args.fps,
                           num_frames=args.num_frames, max_image_size=args.max_image_size or None,
                           num_downscales=args.num_downscales, overwrite=args.overwrite,
                           refine_intrinsics=not args.no_refine_intrinsics,
                           min_registered_fraction=args.min_registered, progress=not args.no_progress)


def main(argv: Optional[List[str]] = None) -> int:
    from threestudio.data.capture import CaptureError, CaptureInputError
    from threestudio.utils.imports import MissingDependencyError

    try:
        summary = run(argv)
    except SystemExit as e:  # argparse: --help (0) or a bad argument (2)
        return int(e.code or 0)
    except CaptureInputError as e:
        sys.stderr.write(f"process_capture.py: error: {e}\n")
        return 2
    except MissingDependencyError as e:
        sys.stderr.write(f"process_capture.py: error: {e}\n")
        return 1
    except CaptureError as e:
        sys.stderr.write(f"process_capture.py: reconstruction failed: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("process_capture.py: interrupted\n")
        return 130
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
