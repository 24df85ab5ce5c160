#!/usr/bin/env python
"""NeRF reconstruction of the quick-start scene: seconds to reach a PSNR target and training rays per second.

Trains the quick-start recipe's modules directly (no Lightning, so the timing is the training loop only), evaluates
held-out PSNR every ``--eval-every`` steps (excluded from the timed training time) and stops at ``--target`` dB or
after ``--time-limit`` seconds. Runs each backend set in the same process:

- ``fast``: Triton hash grid + nerfacc ray marching/compositing (the defaults on CUDA);
- ``torch``: the PyTorch reference paths for both (the baseline).

    python scripts/bench/bench_nerf_quickstart.py --dataroot load/scenes/quickstart-256 --resolution 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import threestudio  # noqa: E402
from threestudio.utils.config import load_config  # noqa: E402
from threestudio.utils.metrics import psnr  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def evaluate(system: Any, views: List[Dict[str, Any]], device: torch.device) -> float:
    system.eval()
    vals = []
    with torch.no_grad():
        for b in views:
            out = system.renderer(b["rays_o"].to(device), b["rays_d"].to(device), bg_color=b["bg_color"].to(device))
            vals.append(float(psnr(out["comp_rgb"][0].clamp(0, 1), b["rgb"][0].to(device))))
    system.train()
    return sum(vals) / len(vals)


def run(name: str, overrides: List[str], args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    cfg = load_config(os.path.join(REPO, "configs/quickstart.yaml"), cli_args=[
        f"data.dataroot={args.dataroot}", "data.synthetic_scene=null", f"data.batch_size={args.rays}",
        *args.overrides, *overrides])
    torch.manual_seed(0)
    dm = threestudio.find(cfg.data_type)(cfg.data)
    dm.setup("fit")
    system = threestudio.find(cfg.system_type)(cfg.system).to(device)
    system.train()
    optim = system.configure_optimizers()["optimizer"]
    views = list(dm.test_dataloader())[: args.eval_views]
    # compile the kernels (Triton JIT, nerfacc load) on a throwaway copy so the timed run measures training only
    import copy

    data_state = copy.deepcopy(dm.state_dict())
    warm = copy.deepcopy(system)
    warm_opt = warm.configure_optimizers()["optimizer"]
    for i in range(3):
        warm.do_update_step(0, i)
        b = dm.draw_train_batch(device)
        torch.nn.functional.mse_loss(warm.renderer(b["rays_o"], b["rays_d"], bg_color=b.get("bg_color"))["comp_rgb"],
                                     b["rgb"]).backward()
        warm_opt.step()
    evaluate(warm, views[:1], device)
    del warm, warm_opt
    dm.load_state_dict(data_state)
    train_time, step, rays, history = 0.0, 0, 0, []
    reached = None
    while train_time < args.time_limit and step < args.max_steps:
        sync()
        t0 = time.perf_counter()
        system.do_update_step(0, step)
        batch = dm.draw_train_batch(device)
        out = system.renderer(batch["rays_o"], batch["rays_d"], bg_color=batch.get("bg_color"))
        loss = torch.nn.functional.mse_loss(out["comp_rgb"], batch["rgb"])
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sync()
        train_time += time.perf_counter() - t0
        step += 1
        rays += batch["rays_o"].shape[0]
        if step % args.eval_every == 0:
            p = evaluate(system, views, device)
            history.append({"step": step, "train_s": round(train_time, 3), "psnr": round(p, 3)})
            print(f"[{name}] step {step:5d}  train {train_time:7.2f}s  psnr {p:6.2f}", flush=True)
            if reached is None and p >= args.target:
                reached = {"step": step, "train_s": train_time}
                if args.stop_at_target:
                    break
    return {"name": name, "steps": step, "train_s": train_time, "rays_per_s": rays / max(train_time, 1e-9),
            "seconds_to_target": None if reached is None else reached["train_s"],
            "steps_to_target": None if reached is None else reached["step"], "history": history,
            "final_psnr": history[-1]["psnr"] if history else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataroot", default="load/scenes/quickstart-256")
    ap.add_argument("--resolution", type=int, default=256, help="generate the scene at this size if it is missing")
    ap.add_argument("--rays", type=int, default=8192)
    ap.add_argument("--target", type=float, default=30.0)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-views", type=int, default=5)
    ap.add_argument("--time-limit", type=float, default=120.0, help="training seconds per backend")
    ap.add_argument("--max-steps", type=int, default=20000)
    ap.add_argument("--stop-at-target", action="store_true", help="stop once the target PSNR is reached")
    ap.add_argument("--backends", default="fast,torch")
    ap.add_argument("--json", default=None)
    ap.add_argument("overrides", nargs="*", help="extra config overrides for both runs")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not os.path.isdir(args.dataroot):
        from threestudio.data.synthetic_scene import make_scene

        make_scene(args.dataroot, resolution=args.resolution)
    sets = {
        "fast": ["system.geometry.pos_encoding_config.backend=auto", "system.renderer.backend=auto"],
        "torch": ["system.geometry.pos_encoding_config.backend=torch", "system.renderer.backend=torch"],
    }
    results = [run(n, sets[n], args, device) for n in args.backends.split(",")]
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"\nNeRF quick-start scene, {args.resolution}^2, {args.rays} rays/step, target {args.target} dB, {gpu}\n")
    print("| backends | steps | train s | rays/s | s to target | final PSNR |")
    print("|---|---|---|---|---|---|")
    for r in results:
        tt = "not reached" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f}"
        print(f"| {r['name']} | {r['steps']} | {r['train_s']:.1f} | {r['rays_per_s']:.3g} | {tt} | {r['final_psnr']} |")
    if len(results) == 2 and results[0]["rays_per_s"] and results[1]["rays_per_s"]:
        print(f"\nrays/s ratio {results[0]['name']}/{results[1]['name']}: "
              f"{results[0]['rays_per_s'] / results[1]['rays_per_s']:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": gpu, "args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
