"""Real-capture reconstruction benchmark: held-out PSNR against training time for the capture recipes.

Runs each recipe through ``launch.py --train`` on one capture (a nerfstudio-style ``transforms.json``; held-out views
are every 8th frame, as the recipes set), then reads each trial's ``save/psnr_vs_time.csv`` (mean PSNR of the
held-out views at every validation, against training time with validation excluded) and ``save/metrics.json``
(the final test pass: PSNR, SSIM, LPIPS when weights are given). Prints one table per recipe and a summary, and
writes everything to ``--json``.

    python scripts/bench/bench_capture.py --dataroot ../shared/data/fox --downscale 4 \\
        --recipes nerf-capture gaussian-capture --json capture.json [--warmup] [-- key=value ...]

``--warmup`` first runs every recipe for a few steps, so that one-time builds (gsplat's CUDA extension, Triton
kernels) are not counted in the timed runs. ``--nerfstudio-results FILE`` adds the rows of nerfstudio's nerfacto /
splatfacto on the same split, as ``scripts/bench/nerfstudio_capture.py`` writes them (``{"method": ..., "curve":
[[step, seconds, psnr], ...], "psnr", "ssim", "train_time_s", "steps"}``, or a list of those).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_recipe(recipe: str, dataroot: str, downscale: int, exp_root: str, overrides: List[str],
               timeout: Optional[float]) -> Dict[str, Any]:
    name = recipe
    cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--config", os.path.join(REPO, "configs", f"{recipe}.yaml"),
           "--train", f"data.dataroot={dataroot}", f"data.downscale={downscale}", f"exp_root_dir={exp_root}",
           "trainer.enable_progress_bar=false", *overrides]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    wall = time.time() - t0
    log = proc.stdout + proc.stderr
    trials = sorted(glob.glob(os.path.join(exp_root, name, "*")), key=os.path.getmtime)
    if proc.returncode != 0 or not trials:
        return {"recipe": recipe, "ok": False, "returncode": proc.returncode, "wall_s": wall, "log_tail": log[-4000:]}
    save = os.path.join(trials[-1], "save")
    curve: List[List[float]] = []
    path = os.path.join(save, "psnr_vs_time.csv")
    if os.path.isfile(path):
        with open(path, newline="") as f:
            curve = [[int(r["step"]), float(r["train_time_s"]), float(r["psnr"])] for r in csv.DictReader(f)]
    metrics: Dict[str, Any] = {}
    if os.path.isfile(os.path.join(save, "metrics.json")):
        with open(os.path.join(save, "metrics.json")) as f:
            metrics = json.load(f)
    n_gauss = None
    for line in log.splitlines():
        if "gaussians:" in line and "Exported" in line:
            try:
                n_gauss = int(line.split("Exported")[1].split()[0])
            except (IndexError, ValueError):
                pass
    return {"recipe": recipe, "ok": True, "wall_s": wall, "trial": trials[-1], "curve": curve, "metrics": metrics,
            "num_gaussians": n_gauss, "overrides": overrides}


def print_run(r: Dict[str, Any]) -> None:
    print(f"\n== {r['recipe']} {' '.join(r.get('overrides', []))}")
    if not r["ok"]:
        print(f"FAILED (exit {r['returncode']}):\n{r['log_tail']}")
        return
    print(f"{'step':>7} {'train s':>8} {'PSNR':>7}")
    for step, t, p in r["curve"]:
        print(f"{step:>7} {t:>8.1f} {p:>7.2f}")
    m = r["metrics"]
    extra = f", LPIPS {m['test/lpips']:.4f}" if "test/lpips" in m else ""
    print(f"final: PSNR {m.get('test/psnr', float('nan')):.2f} dB, SSIM {m.get('test/ssim', float('nan')):.4f}{extra}"
          f" after {m.get('train_time_s', float('nan')):.1f} s of training ({m.get('step')} steps); "
          f"{r['wall_s']:.0f} s wall including loading, evaluation and export"
          + (f"; {r['num_gaussians']} gaussians" if r.get("num_gaussians") else ""))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataroot", required=True)
    ap.add_argument("--downscale", type=int, default=4)
    ap.add_argument("--recipes", nargs="+", default=["nerf-capture", "gaussian-capture"])
    ap.add_argument("--exp-root", default=None, help="where the trials go (default: a folder under /tmp)")
    ap.add_argument("--warmup", action="store_true", help="run each recipe for a few steps first (builds, caches)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run")
    ap.add_argument("--json", default=None)
    ap.add_argument("--nerfstudio-results", default=None)
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every recipe (after --)")
    args = ap.parse_args(argv)
    exp_root = args.exp_root or os.path.join("/tmp", f"bench_capture_{int(time.time())}")
    results: List[Dict[str, Any]] = []
    if args.warmup:
        for recipe in args.recipes:
            r = run_recipe(recipe, args.dataroot, args.downscale, exp_root + "_warmup",
                           ["trainer.max_steps=20", "trainer.val_check_interval=20"], args.timeout)
            print(f"warm-up {recipe}: {'ok' if r['ok'] else 'FAILED'} in {r['wall_s']:.0f} s")
            if not r["ok"]:
                print(r["log_tail"])
    for recipe in args.recipes:
        r = run_recipe(recipe, args.dataroot, args.downscale, exp_root, list(args.overrides), args.timeout)
        print_run(r)
        results.append(r)
    if args.nerfstudio_results and os.path.isfile(args.nerfstudio_results):
        with open(args.nerfstudio_results) as f:
            ns = json.load(f)
        for entry in ns if isinstance(ns, list) else [ns]:
            results.append({"recipe": str(entry.get("method")), "ok": True, "curve": entry.get("curve", []),
                            "metrics": {"test/psnr": entry.get("psnr"), "test/ssim": entry.get("ssim", float("nan")),
                                        "train_time_s": entry.get("train_time_s"), "step": entry.get("steps")},
                            "wall_s": entry.get("wall_s", float("nan"))})
            print_run(results[-1])
    print("\n| recipe | downscale | held-out PSNR | SSIM | training time | steps |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if r["ok"]:
            m = r["metrics"]
            print(f"| {r['recipe']} | {args.downscale} | {m.get('test/psnr', float('nan')):.2f} dB | "
                  f"{m.get('test/ssim', float('nan')):.4f} | {m.get('train_time_s', float('nan')):.0f} s | "
                  f"{m.get('step', '')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dataroot": args.dataroot, "downscale": args.downscale, "results": results}, f, indent=1)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
