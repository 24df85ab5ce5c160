#!/usr/bin/env python
"""Write the randomly initialised, reduced models of the Zero-1-to-G end-to-end demo (no download) into OUT, in the
SD-image-variations folder layout that ``zero1tog-system`` and :class:`Zero1toGPipeline` read:

    python custom/zero1tog/scripts/make_demo_models.py OUT [--preset demo|smoke] [--resolution 32] [--seed 0]

* ``unet/``: a small :class:`Zero1toGUNet` (cross-view and joint attention, camera + attribute class embedding),
  random init, ``sample_size`` = the splatter resolution (the latents are not downsampled, see the VAE);
* ``vae/``: an ``AutoencoderKL`` whose weights are set by hand so that it is an **identity autoencoder**:
  latent = (the 3 channels of the image, 0) at full resolution, decode(encode(x)) = x to ~1e-5 (fp32). A random VAE
  cannot be used (its decoder does not invert its encoder: generated latents would decode to noise), and an 8x
  downsampling 4-channel VAE would have to be trained first (SD's is, on billions of images). Here the demo spends
  all of its budget on the diffusion UNet, which is what it is meant to show; the latents live at the splatter
  resolution (32^2 for the demo) with 4 channels (the 4th is always 0). How: one resolution level, every resnet's
  ``conv2`` and the attention's ``to_out`` are zero (the blocks pass their input through), ``conv_in`` writes each
  image channel x into a GroupNorm group as (x, -x, K, -K) so that the final GroupNorm divides by
  sqrt((mean(x^2) + K^2) / 2) ~ K / sqrt(2) (relative error <= 1 / (2 K^2) = 5e-5 at K = 100) and subtracts 0, and
  ``conv_out`` reads silu(y) - silu(-y) = y exactly, times K / sqrt(2); the log-variance is -30 (std 3e-7);
* ``image_encoder/``: a small random ``CLIPVisionModelWithProjection`` (frozen during training: its image
  embedding is a fixed random feature of the condition image; the condition latent carries the input view itself);
* ``scheduler/``: SD-image-variations' DDPM schedule (epsilon prediction).

The script checks the VAE round trip on random images before it returns.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Dict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

IDENTITY_K = 100.0
VAE_CHANNELS = 16  # 4 GroupNorm groups of 4 channels: one per latent channel

# the reduced UNets (sample_size is set from --resolution)
PRESETS: Dict[str, Dict[str, Any]] = {
    # ~13 M parameters: 32^2 latents -> 16^2 -> 8^2, cross-view + joint attention at every level
    "demo": dict(unet=dict(layers_per_block=1, block_out_channels=(64, 128, 192),
                           down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                           up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                           cross_attention_dim=64, attention_head_dim=4, norm_num_groups=32),
                 clip=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=8, projection_dim=64)),
    # CPU tests: seconds per step
    "smoke": dict(unet=dict(layers_per_block=1, block_out_channels=(32, 64),
                            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                            cross_attention_dim=16, attention_head_dim=2, norm_num_groups=8),
                  clip=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                            image_size=32, patch_size=8, projection_dim=16)),
}


def identity_vae(scaling_factor: float = 1.0, sample_size: int = 32):
    """An ``AutoencoderKL`` (3 -> 4 latent channels, no downsampling) whose decode(encode(x)) is x (docstring)."""
    import torch
    from diffusers import AutoencoderKL

    c = VAE_CHANNELS
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(c,), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        norm_num_groups=4, sample_size=sample_size, scaling_factor=float(scaling_factor))
    k, s = IDENTITY_K, IDENTITY_K / math.sqrt(2.0)
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        for name, m in vae.named_modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.fill_(1.0)
        for part, n_in in ((vae.encoder, 3), (vae.decoder, 4)):
            w = part.conv_in.weight  # [16, n_in, 3, 3]; group g = channels 4g..4g+3 = (x_g, -x_g, K, -K)
            for g in range(4):
                if g < min(n_in, 3):
                    w[4 * g, g, 1, 1] = 1.0
                    w[4 * g + 1, g, 1, 1] = -1.0
                part.conv_in.bias[4 * g + 2] = k
                part.conv_in.bias[4 * g + 3] = -k
        # encoder.conv_out -> (mean 4, logvar 4); decoder.conv_out -> 3 channels: s * (silu(y_g) - silu(-y_g))
        for conv, n_out in ((vae.encoder.conv_out, 3), (vae.decoder.conv_out, 3)):
            for j in range(n_out):
                conv.weight[j, 4 * j, 1, 1] = s
                conv.weight[j, 4 * j + 1, 1, 1] = -s
        vae.encoder.conv_out.bias[4:] = -30.0
        for q in (vae.quant_conv, vae.post_quant_conv):
            q.weight[:, :, 0, 0] = torch.eye(q.weight.shape[0])
    return vae


def check_identity_vae(vae, size: int = 16, tol: float = 1e-4) -> float:
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, size, size, generator=g) * 2 - 1
    with torch.no_grad():
        lat = vae.encode(x).latent_dist.mode()
        y = vae.decode(lat).sample
    err = float((y - x).abs().max())
    lat_err = float((lat[:, :3] - x).abs().max())
    if err > tol or lat_err > tol or float(lat[:, 3].abs().max()) > tol:
        raise RuntimeError(f"identity VAE: round-trip error {err:.2e}, latent error {lat_err:.2e} (> {tol})")
    return err


def make_demo_models(out: str, preset: str = "demo", resolution: int = 32, seed: int = 0,
                     scaling_factor: float = 1.0) -> Dict[str, Any]:
    import torch
    from diffusers import DDPMScheduler
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from threestudio.utils.extensions import import_extension
    from threestudio.utils.weights import SD_SCHEDULER

    import_extension(os.path.join(REPO, "custom", "zero1tog"), namespace="custom")
    from custom.zero1tog.model.unet import NUM_ATTRIBUTES, Zero1toGUNet

    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if resolution < 8 or resolution % 4:
        raise ValueError(f"--resolution must be a multiple of 4 and >= 8, got {resolution}")
    p = PRESETS[preset]
    torch.manual_seed(seed)
    unet = Zero1toGUNet(sample_size=resolution, in_channels=8, out_channels=4, class_embed_type="projection",
                        projection_class_embeddings_input_dim=2 * (3 + NUM_ATTRIBUTES), **p["unet"])
    os.makedirs(out, exist_ok=True)
    unet.save_pretrained(os.path.join(out, "unet"))
    vae = identity_vae(scaling_factor, resolution)
    err = check_identity_vae(vae)
    vae.save_pretrained(os.path.join(out, "vae"))
    CLIPVisionModelWithProjection(CLIPVisionConfig(**p["clip"])).save_pretrained(os.path.join(out, "image_encoder"))
    DDPMScheduler(**{k: v for k, v in SD_SCHEDULER.items() if k != "set_alpha_to_one"}).save_pretrained(
        os.path.join(out, "scheduler"))
    info = {"preset": preset, "resolution": resolution, "seed": seed, "scaling_factor": scaling_factor,
            "unet_parameters": sum(x.numel() for x in unet.parameters()), "vae": "identity (no downsampling)",
            "vae_round_trip_max_error": err}
    with open(os.path.join(out, "demo_models.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    ap.add_argument("--resolution", type=int, default=32, help="splatter resolution = UNet sample size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scaling-factor", type=float, default=1.0, help="VAE latent scaling factor")
    a = ap.parse_args(argv)
    try:
        info = make_demo_models(a.out, a.preset, a.resolution, a.seed, a.scaling_factor)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
