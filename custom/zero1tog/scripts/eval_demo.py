#!/usr/bin/env python
"""Held-out evaluation of the Zero-1-to-G demo: novel-view PSNR of generated gaussians against a mean-shape baseline.

    python custom/zero1tog/scripts/eval_demo.py TRIAL_OR_CKPT [--data DATA] [--json OUT.json] [--steps 50]
        [--guidance 5[,2,...]] [--eta 1] [--seed 0] [--max-objects N] [--device auto] [--no-require-beat]

TRIAL_OR_CKPT: a trained ``zero1tog-system`` trial (its ``ckpts/last.ckpt``) or checkpoint; its saved config names
the models folder and the data (``--data`` replaces the data folder). The **held-out objects** are the data module's
validation objects (the last ``data.n_val_objects`` by name), which training never draws. For each of them:

* **model**: :class:`Zero1toGPipeline` (the trial's EMA UNet, DDIM ``--steps``, eta ``--eta``, CFG ``--guidance``,
  the object's true input elevation in the camera labels, seed ``--seed`` + object number) turns the object's
  condition image (its input view on white) into a splatter, rendered through :func:`render_splatter` at the
  object's held-out cameras (never used by the GT fit, nor by training);
* **baseline** (mean shape): the mean of the training objects' attribute images (each object in its own object
  frame, anchored at its input camera, as the model generates), mapped back to one splatter, rendered at the same
  cameras;
* **GT fit** (reference): the object's own fitted GT splatter at the same cameras (the ceiling of the data);

PSNR per held-out view against the mesh render (RGB on white), averaged per object, then over objects. A table is
printed, ``--json`` gets everything (and ``--grid`` a PNG: GT | model | baseline | GT fit, first held-out view of
the first 8 objects). With several ``--guidance`` values, the first decides; the others are reported alongside. The
exit status is 1 when the model's mean PSNR does not exceed the baseline's by more than ``--min-margin`` dB (0)
(``--no-require-beat``: always 0 after a complete evaluation).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB, peak 1) of two images in [0, 1]."""
    mse = float(torch.mean((a.float().clamp(0, 1) - b.float().clamp(0, 1)) ** 2))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def render_views(splatter: torch.Tensor, c2w: torch.Tensor, fovy: float, height: int, width: int,
                 background: Sequence[float] = (1.0, 1.0, 1.0), backend: str = "auto") -> torch.Tensor:
    """One splatter [V, 14, H, W] at cameras [N, 4, 4] -> RGB [N, 3, h, w] on ``background``."""
    from custom.zero1tog.splatter import render_splatter

    dev = splatter.device
    out = render_splatter(splatter.float(), c2w.to(dev).float(), float(fovy), height, width, tuple(background),
                          backend=backend)
    return out["rgb"].permute(0, 3, 1, 2).clamp(0, 1)


def views_psnr(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Mean over views of the per-view PSNR (pred, gt: [N, 3, h, w])."""
    return sum(psnr(p, g) for p, g in zip(pred, gt)) / len(gt)


def mean_splatter(attribute_images: Sequence[torch.Tensor], mapping: str = "wonder3d") -> torch.Tensor:
    """The mean-shape baseline: mean of attribute images [5, V, 3, H, W] (in [-1, 1]) -> splatter [V, 14, H, W]."""
    from custom.zero1tog.splatter import attribute_images_to_splatter

    if not len(attribute_images):
        raise ValueError("mean_splatter: no training objects")
    mean = torch.stack([a.float() for a in attribute_images]).mean(0)
    return attribute_images_to_splatter(mean, mapping)


def evaluate(objects: Sequence[Dict[str, Any]], generators: Dict[str, Callable[[Dict[str, Any]], torch.Tensor]],
             background: Sequence[float] = (1.0, 1.0, 1.0), backend: str = "auto", device: Any = "cpu",
             log: Callable[[str], None] = print) -> Dict[str, Any]:
    """PSNR at each object's held-out views of every generator's splatter.

    ``objects``: dicts with ``name``, ``heldout_rgb`` [N, 3, h, w] in [0, 1], ``heldout_c2w`` [N, 4, 4], ``fovy``
    (radians); ``generators``: name -> f(object) -> splatter [V, 14, H, W]. Returns ``{"per_object": [{"name", name:
    psnr, ...}], "mean": {name: mean psnr}, "seconds": {name: seconds}}``."""
    rows: List[Dict[str, Any]] = []
    secs = {k: 0.0 for k in generators}
    for obj in objects:
        gt = obj["heldout_rgb"].float()
        h, w = gt.shape[-2:]
        row: Dict[str, Any] = {"name": obj["name"]}
        for k, gen in generators.items():
            t0 = time.perf_counter()
            sp = gen(obj).to(device)
            secs[k] += time.perf_counter() - t0
            rgb = render_views(sp, obj["heldout_c2w"], float(obj["fovy"]), h, w, background, backend).cpu()
            row[k] = views_psnr(rgb, gt)
        rows.append(row)
        log("  " + obj["name"] + ": " + ", ".join(f"{k} {row[k]:.2f}" for k in generators))
    mean = {k: sum(r[k] for r in rows) / max(1, len(rows)) for k in generators}
    return {"per_object": rows, "mean": mean, "seconds": secs}


# ----------------------------------------------------------------------------------------------- the trial
def load_trained_system(trial_or_ckpt: str, device: Any) -> Any:
    """The trial's ``zero1tog-system`` with its checkpoint's weights (EMA included), eval mode, on ``device``."""
    from omegaconf import OmegaConf

    from threestudio.utils.trials import load_trial_config, resolve_checkpoint

    ckpt = resolve_checkpoint(trial_or_ckpt, key="TRIAL_OR_CKPT")
    cfg = load_trial_config(ckpt)
    from custom.zero1tog.system import Zero1toGSystem

    scfg = OmegaConf.merge(cfg.system, {"init_from": None, "image": None})
    sysm = Zero1toGSystem(scfg)
    sd = torch.load(ckpt, map_location="cpu", weights_only=False)
    missing, unexpected = sysm.load_state_dict(sd["state_dict"], strict=False)
    bad = [k for k in missing if k.startswith(("unet.", "unet_ema."))]
    if bad or unexpected:
        raise ValueError(f"{ckpt}: checkpoint does not match the system (missing {bad[:3]}, unexpected "
                         f"{list(unexpected)[:3]})")
    sysm.eval().to(device)
    return sysm, cfg, ckpt, int(sd.get("global_step", -1))


def heldout_objects(dm: Any, indices: Sequence[int]) -> List[Dict[str, Any]]:
    out = []
    for i in indices:
        it = dm.eval_item(int(i))
        cams = dm.load(int(i))["cameras"]
        out.append({"name": it["name"], "index": int(i), "cond_rgb": it["cond_rgb"][0],
                    "heldout_rgb": it["heldout_rgb"][0], "heldout_c2w": it["heldout_c2w"][0],
                    "fovy": float(it["fovy"][0]), "splatter": it["splatter"][0],
                    "input_elevation_deg": float(cams["views"]["input"]["elevation_deg"][0])})
    return out


def training_attributes(dm: Any) -> List[torch.Tensor]:
    """The training objects' attribute images (splatter files only, not their renders)."""
    from safetensors.torch import load_file

    from custom.zero1tog.splatter import splatter_to_attribute_images

    return [splatter_to_attribute_images(load_file(os.path.join(dm.root, dm.names[i], "splatter.safetensors"))
                                         ["splatter"], dm.cfg.mapping) for i in dm.train_indices]


def save_grid(path: str, objects: Sequence[Dict[str, Any]], gens: Dict[str, Callable], cache: Dict[str, Any],
              background: Sequence[float], backend: str, device: Any) -> None:
    from threestudio.utils.saving import atomic_write_bytes, encode_png

    rows = []
    for obj in objects[:8]:
        gt = obj["heldout_rgb"][:1].float()
        h, w = gt.shape[-2:]
        cols = [gt[0]]
        for k in gens:
            sp = cache[(obj["name"], k)]
            cols.append(render_views(sp.to(device), obj["heldout_c2w"][:1], obj["fovy"], h, w, background,
                                     backend)[0].cpu())
        rows.append(torch.cat(cols, -1))
    img = torch.cat(rows, -2).permute(1, 2, 0).numpy()
    atomic_write_bytes(path, encode_png((img * 255.0 + 0.5).clip(0, 255).astype("uint8")))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trial", help="trained zero1tog-system trial folder or checkpoint (stage 2 for the demo)")
    ap.add_argument("--data", default=None, help="splatter data folder (default: the trial's data.dataroot)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--grid", default=None, help="write a PNG: GT | model | baseline | GT fit per object")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps (the authors': 50)")
    ap.add_argument("--guidance", default="5", help="CFG scale(s), comma-separated; the first decides")
    ap.add_argument("--eta", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-objects", type=int, default=0, help="evaluate only the first N held-out objects (0: all)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--backend", default="auto", help="splatting backend (auto: gsplat on CUDA)")
    ap.add_argument("--min-margin", type=float, default=0.0, help="dB the model must beat the baseline by")
    ap.add_argument("--no-require-beat", action="store_true", help="exit 0 even if the model does not win")
    a = ap.parse_args(argv)

    from threestudio.utils.extensions import import_extension

    import_extension(os.path.join(REPO, "custom", "zero1tog"), namespace="custom")
    from omegaconf import OmegaConf

    from custom.zero1tog.data import SplatterDataModule
    from custom.zero1tog.inference import InferenceConfig, Zero1toGPipeline

    try:
        guidances = [float(x) for x in str(a.guidance).split(",") if x.strip()]
        if not guidances or a.steps < 1:
            raise ValueError("--guidance needs at least one value and --steps >= 1")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = torch.device("cuda" if (a.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if a.device == "auto" else a.device))
    t_start = time.perf_counter()
    sysm, cfg, ckpt, step = load_trained_system(a.trial, device)
    dcfg = OmegaConf.merge(cfg.data, {"dataroot": a.data} if a.data else {})
    dm = SplatterDataModule(dcfg)
    idx = dm.val_indices[: a.max_objects] if a.max_objects > 0 else dm.val_indices
    objects = heldout_objects(dm, idx)
    bg = tuple(float(x) for x in dm.cfg.background)
    mapping = str(sysm.cfg.mapping)
    baseline = mean_splatter(training_attributes(dm), mapping).to(device)
    unet = sysm.unet_state(True)
    sched = sysm.sampling_scheduler()  # set_timesteps resets it at every call: one for all objects
    cache: Dict[Any, torch.Tensor] = {}

    def model_gen(guidance: float, key: str) -> Callable[[Dict[str, Any]], torch.Tensor]:
        def gen(obj: Dict[str, Any]) -> torch.Tensor:
            icfg = InferenceConfig(num_inference_steps=a.steps, guidance_scale=guidance, eta=a.eta, mapping=mapping,
                                   view_set=str(sysm.cfg.view_set), input_elevation_deg=obj["input_elevation_deg"])
            pipe = Zero1toGPipeline(unet, sysm.condition, sched, icfg)
            g = torch.Generator().manual_seed(a.seed + obj["index"])
            sp = pipe(obj["cond_rgb"][None].to(device), g)["splatter"][0]
            cache[(obj["name"], key)] = sp
            return sp
        return gen

    def fixed(key: str, f: Callable[[Dict[str, Any]], torch.Tensor]) -> Callable[[Dict[str, Any]], torch.Tensor]:
        def gen(obj: Dict[str, Any]) -> torch.Tensor:
            sp = f(obj)
            cache[(obj["name"], key)] = sp
            return sp
        return gen

    gens: Dict[str, Callable] = {}
    names = []
    for gs in guidances:
        k = "model" if not names else f"model_cfg{gs:g}"
        names.append(k)
        gens[k] = model_gen(gs, k)
    gens["baseline"] = fixed("baseline", lambda obj: baseline)
    gens["gt_fit"] = fixed("gt_fit", lambda obj: obj["splatter"])
    print(f"eval_demo: {len(objects)} held-out objects x {objects[0]['heldout_c2w'].shape[0] if objects else 0} "
          f"views, {len(dm.train_indices)} training objects (baseline), {ckpt} (step {step}), {device}")
    with torch.no_grad():
        res = evaluate(objects, gens, bg, a.backend, device)
    m = res["mean"]
    margin = m["model"] - m["baseline"]
    beats = margin > a.min_margin
    print("\n| splatter | held-out PSNR (dB) | seconds |\n|---|---|---|")
    for k in gens:
        print(f"| {k} | {m[k]:.2f} | {res['seconds'][k]:.1f} |")
    print(f"\nmodel - baseline: {margin:+.2f} dB -> {'BEATS' if beats else 'DOES NOT BEAT'} the mean-shape baseline")
    out = {"model_psnr": m["model"], "baseline_psnr": m["baseline"], "gt_fit_psnr": m["gt_fit"],
           "margin_db": margin, "min_margin_db": a.min_margin, "beats_baseline": bool(beats),
           "guidance_scales": guidances, "mean_psnr": m, "per_object": res["per_object"],
           "n_heldout_objects": len(objects), "n_train_objects": len(dm.train_indices),
           "n_views_per_object": int(objects[0]["heldout_c2w"].shape[0]) if objects else 0,
           "steps": a.steps, "eta": a.eta, "seed": a.seed, "checkpoint": os.path.abspath(ckpt), "global_step": step,
           "stage": str(sysm.cfg.stage), "data": dm.root, "device": str(device),
           "seconds_generate": res["seconds"], "seconds_total": time.perf_counter() - t_start,
           "unet_parameters": sum(p.numel() for p in unet.parameters())}
    if a.grid:
        save_grid(a.grid, objects, gens, cache, bg, a.backend, device)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if (beats or a.no_require_beat) else 1


if __name__ == "__main__":
    sys.exit(main())
