#!/usr/bin/env python
"""One image in, 3D gaussians out, with a Zero-1-to-G model (custom/zero1tog/inference.py).

    python custom/zero1tog/scripts/image_to_gaussians.py PHOTO.png OUT_DIR [--model HUB_ID_OR_FOLDER] \
        [--steps 50] [--guidance-scale 5.0] [--seed 0] [--eta 1.0] [--elevation 15] [--device cuda] [--fp16]

PHOTO: an RGBA image (transparent background); an RGB image needs the optional package rembg for background removal.
MODEL: a folder (or hub id) with unet/, vae/, image_encoder/ (scheduler/ optional), e.g. one a Zero-1-to-G training
run wrote; the default, the base SD-image-variations model, gives an untrained UNet (noise-like gaussians).
OUT_DIR gets gaussians.ply (3DGS PLY), turntable.mp4, attributes.png (5 attributes x 6 views), input.png,
splatter.pt and timing.json (seconds per object); nothing else is written, the input's folder least of all.
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
    p.add_argument("image")
    p.add_argument("out_dir")
    p.add_argument("--model", default=None, help="hub id or folder (default: lambdalabs/sd-image-variations-diffusers)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50, the authors')")
    p.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (default 5.0; 1: no guidance)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (default 1.0, the authors')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--elevation", type=float, default=None, help="assumed input camera elevation, degrees")
    p.add_argument("--input-size", type=int, default=320, help="side of the preprocessed condition image")
    p.add_argument("--remove-background", choices=("auto", "always", "never"), default="auto",
                   help="rembg background removal: auto (only without alpha), always, never")
    p.add_argument("--frames", type=int, default=60, help="turntable frames (0: no video)")
    p.add_argument("--video-resolution", type=int, default=256)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--fp16", action="store_true", help="half-precision models (CUDA)")
    args = p.parse_args(argv)

    import torch

    from threestudio.utils.extensions import import_extension

    import_extension(os.path.join(REPO, "custom", "zero1tog"), namespace="custom")
    from custom.zero1tog.inference import (InferenceConfig, MissingPackageError, OutputConfig, Zero1toGPipeline,
                                           image_to_gaussians)
    from custom.zero1tog.model.layout import SD_IMAGE_VARIATIONS
    from threestudio.utils.weights import PretrainedWeightsError

    cfg = InferenceConfig()
    for name, value in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance_scale),
                        ("eta", args.eta), ("input_elevation_deg", args.elevation)):
        if value is not None:
            setattr(cfg, name, value)
    if not os.path.isfile(args.image):
        print(f"error: no image file {args.image}", file=sys.stderr)
        return 2
    if cfg.num_inference_steps < 1:
        print("error: --steps must be >= 1", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = args.model or SD_IMAGE_VARIATIONS
    if args.model is None:
        print(f"warning: no --model given; using the base model {model}, whose grown UNet is not trained to make "
              "splatters", file=sys.stderr)
    remove_bg = {"auto": None, "always": True, "never": False}[args.remove_background]
    try:
        pipe = Zero1toGPipeline.from_pretrained(model, torch_dtype=torch.float16 if args.fp16 else None,
                                                device=device, cfg=cfg)
        out = image_to_gaussians(args.image, args.out_dir, pipe, seed=args.seed, input_size=args.input_size,
                                 remove_bg=remove_bg,
                                 ocfg=OutputConfig(turntable_frames=args.frames,
                                                   turntable_resolution=args.video_resolution,
                                                   extra={"device": str(pipe.device), "model": model}))
    except (MissingPackageError, PretrainedWeightsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for kind, path in out["paths"].items():
        print(f"{kind}: {path}")
    print(f"seconds per object: {out['seconds_per_object']:.2f} ({pipe.device}, {cfg.num_inference_steps} steps, "
          f"guidance {cfg.guidance_scale})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
