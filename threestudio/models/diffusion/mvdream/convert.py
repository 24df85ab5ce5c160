"""Convert ``sd-v2.1-base-4view.pt`` into a diffusers-format folder (faster to load, fp16 halves the size).

    python -m threestudio.models.diffusion.mvdream.convert /path/to/sd-v2.1-base-4view.pt /path/to/mvdream-diffusers \\
        [--tokenizer stabilityai/stable-diffusion-2-1-base] [--fp16]

Then use ``pretrained_model_name_or_path: /path/to/mvdream-diffusers`` and ``checkpoint_file: null`` in both the
guidance and the prompt processor. Every tensor name and shape is checked before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import torch


def main(argv: Optional[List[str]] = None) -> int:
    from threestudio.models.diffusion.mvdream import loading
    from threestudio.models.diffusion.mvdream.loading import DEFAULT_TOKENIZER

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="sd-v2.1-base-4view.pt (or a hub id holding it, with --file)")
    ap.add_argument("out", help="output folder")
    ap.add_argument("--file", default=loading.DEFAULT_FILE, help="checkpoint file name inside a folder / hub repo")
    ap.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                    help="where to take the CLIP tokenizer from (its tokenizer/ subfolder); '' to skip")
    ap.add_argument("--fp16", action="store_true", help="store the weights in fp16")
    args = ap.parse_args(argv)
    dtype = torch.float16 if args.fp16 else torch.float32
    models = loading.load_mvdream(args.checkpoint, ("unet", "vae", "text_encoder", "alphas"),
                                  checkpoint_file=args.file, key="checkpoint", dtype=dtype)
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, subfolder="tokenizer")
    loading.save_mvdream_diffusers(args.out, models, tokenizer)
    print(f"wrote {args.out} (unet/ vae/ text_encoder/ scheduler/{' tokenizer/' if tokenizer else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
