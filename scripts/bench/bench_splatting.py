#!/usr/bin/env python
"""Gaussian splatting benchmarks, in one run:

1. ``recon``: reconstruction of the quick-start scene at 256^2 with ``configs/gaussian-recon.yaml``'s modules
   (gsplat on CUDA), held-out PSNR every ``--eval-every`` steps (not timed) until ``--target`` dB, against the NeRF
   path on the same data and views (``bench_nerf_quickstart.py``'s loop: Triton hash grid + nerfacc), both trained
   here without Lightning so that the times are the training loops only.
2. ``render``: one 1920x1080 view of 1M gaussians (SH degree 3): forward and forward+backward, gsplat unpacked and
   packed (each the other's baseline).
3. ``speedup``: 10k gaussians at 256^2, forward+backward: gsplat against our PyTorch reference on the same GPU.

Times are medians of CUDA-event timings after warm-up (``triton.testing.do_bench`` when available). The markdown
table comes last; ``--json`` writes everything.

    python scripts/bench/bench_splatting.py --dataroot .gpu/data/quickstart-256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Sequence

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import threestudio  # noqa: E402
from threestudio.ops.cameras import look_at  # noqa: E402
from threestudio.ops.splatting import camera_matrices, rasterize_gaussians  # noqa: E402
from threestudio.utils.config import load_config  # noqa: E402
from threestudio.utils.metrics import psnr, ssim  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], Any], warmup: int = 5, rep: int = 20) -> float:
    """Median milliseconds of ``fn`` (CUDA events; wall clock on CPU)."""
    if torch.cuda.is_available():
        try:
            import triton.testing

            return float(triton.testing.do_bench(fn, warmup=warmup * 10, rep=rep * 10, return_mode="median"))
        except Exception:
            pass
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rep):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------ 1. recon
def gaussian_recon(args: argparse.Namespace, device: torch.device, name: str = "gaussians",
                   overrides: Sequence[str] = ()) -> Dict[str, Any]:
    cfg = load_config(os.path.join(REPO, "configs/gaussian-recon.yaml"), cli_args=[
        f"data.dataroot={args.dataroot}", "data.synthetic_scene=null", *args.gs_overrides, *overrides])
    torch.manual_seed(0)
    dm = threestudio.find(cfg.data_type)(cfg.data)
    dm.setup("fit")
    system = threestudio.find(cfg.system_type)(cfg.system).to(device)
    system.train()
    optim = system.configure_optimizers()["optimizer"]
    views = list(dm.test_dataloader())[: args.eval_views]
    lam = {k: float(v) for k, v in cfg.system.loss.items()}

    def evaluate() -> float:
        system.eval()
        with torch.no_grad():
            vals = [float(psnr(system({k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()})[
                "comp_rgb"][0].clamp(0, 1), b["rgb"][0].to(device))) for b in views]
        system.train()
        return sum(vals) / len(vals)

    # first call: gsplat's build / load, outside the timing
    t0 = time.perf_counter()
    with torch.no_grad():
        system(dm.draw_train_batch(device))
    sync()
    first_call_s = time.perf_counter() - t0
    train_time, step, history, reached = 0.0, 0, [], None
    while train_time < args.time_limit and step < args.max_steps:
        sync()
        t0 = time.perf_counter()
        system.do_update_step(0, step)
        for g in optim.param_groups:
            if g["name"] == "means":
                g["lr"] = system._means_lr(step)
        batch = dm.draw_train_batch(device)
        out = system(batch)
        meta = out["splat_meta"]
        if system._strategy is not None:
            system._strategy.step_pre_backward(system.geometry.params, system._views(), system._strategy_state, step,
                                               meta)
        pred, gt = out["comp_rgb"], batch["rgb"]
        loss = lam.get("lambda_l1", 1.0) * (pred - gt).abs().mean()
        if lam.get("lambda_ssim", 0.0) > 0:
            loss = loss + lam["lambda_ssim"] * (1.0 - ssim(pred, gt))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        system._last_meta, system._last_step = meta, step
        system._densify()
        sync()
        train_time += time.perf_counter() - t0
        step += 1
        if step % args.eval_every == 0:
            p = evaluate()
            history.append({"step": step, "train_s": round(train_time, 3), "psnr": round(p, 3),
                            "gaussians": system.geometry.num_gaussians})
            print(f"[{name}] step {step:5d}  train {train_time:7.2f}s  psnr {p:6.2f}  "
                  f"N {system.geometry.num_gaussians}", flush=True)
            if reached is None and p >= args.target:
                reached = {"step": step, "train_s": train_time}
    backend = "gsplat" if device.type == "cuda" else "torch"
    return {"name": f"{name} ({backend}, {cfg.data.batch_size} image{'s' if cfg.data.batch_size > 1 else ''}/step)",
            "overrides": list(overrides), "steps": step,
            "train_s": train_time, "seconds_to_target": None if reached is None else reached["train_s"],
            "steps_to_target": None if reached is None else reached["step"], "history": history,
            "final_psnr": history[-1]["psnr"] if history else None, "first_call_s": first_call_s,
            "gaussians": system.geometry.num_gaussians}


def nerf_recon(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    import bench_nerf_quickstart as nq

    ns = argparse.Namespace(dataroot=args.dataroot, rays=8192, overrides=[
        "system.geometry.pos_encoding_config.n_levels=16", "system.geometry.pos_encoding_config.log2_hashmap_size=19",
        "system.geometry.pos_encoding_config.max_resolution=1024", "system.renderer.num_samples_per_ray=256"],
        eval_views=args.eval_views, time_limit=args.nerf_time_limit, max_steps=args.max_steps, eval_every=25,
        target=args.target, stop_at_target=False)
    fast = ["system.geometry.pos_encoding_config.backend=auto", "system.renderer.backend=auto"]
    r = nq.run("nerf", fast, ns, device)
    r["name"] = "NeRF (Triton hash grid + nerfacc)" if device.type == "cuda" else "NeRF (torch)"
    return r


# ------------------------------------------------------------------------------------------------ 2./3. renders
def random_scene(n: int, device: torch.device, sh_degree: int = 3, seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    return {
        "means": (torch.rand(n, 3, generator=g) * 2 - 1).to(device),
        "quats": torch.randn(n, 4, generator=g).to(device),
        "scales": torch.exp(torch.randn(n, 3, generator=g) * 0.3 + math.log(0.3 / n ** (1 / 3))).to(device),
        "opacities": (torch.rand(n, generator=g) * 0.9 + 0.1).to(device),
        "colors": (torch.randn(n, k, 3, generator=g) * 0.2).to(device),
    }


def camera(width: int, height: int, device: torch.device, fovy_deg: float = 50.0):
    f = 0.5 * height / math.tan(math.radians(fovy_deg) / 2)
    vm, K = camera_matrices(look_at(torch.tensor([[2.2, 1.6, 1.2]])),
                            torch.tensor([[f, f, width / 2, height / 2]]))
    return vm.to(device), K.to(device)


def render_fns(scene: Dict[str, torch.Tensor], width: int, height: int, device: torch.device, backend: str,
               packed: bool = False, sh_degree: int = 3, tile_size: int = 16):
    vm, K = camera(width, height, device)
    leaves = {k: v.clone().requires_grad_() for k, v in scene.items()}

    def fwd():
        with torch.no_grad():
            return rasterize_gaussians(**scene, viewmats=vm, Ks=K, width=width, height=height, sh_degree=sh_degree,
                                       backend=backend, packed=packed, tile_size=tile_size)

    def fwd_bwd():
        for v in leaves.values():
            v.grad = None
        out = rasterize_gaussians(**leaves, viewmats=vm, Ks=K, width=width, height=height, sh_degree=sh_degree,
                                  backend=backend, packed=packed, tile_size=tile_size)
        (out["rgb"].sum() + out["depth"].sum()).backward()

    return fwd, fwd_bwd


def render_1m(args: argparse.Namespace, device: torch.device) -> List[Dict[str, Any]]:
    scene = random_scene(args.render_n, device)
    rows = []
    for packed in (False, True):
        fwd, fwd_bwd = render_fns(scene, args.render_width, args.render_height, device, "gsplat", packed=packed)
        out = fwd()
        cover = float(out["alpha"].mean())
        torch.cuda.reset_peak_memory_stats()
        t_f = time_ms(fwd)
        t_fb = time_ms(fwd_bwd)
        rows.append({"what": f"{args.render_n / 1e6:g}M gaussians, {args.render_width}x{args.render_height}, SH3, "
                             f"gsplat {'packed' if packed else 'unpacked'}", "fwd_ms": t_f, "fwd_bwd_ms": t_fb,
                     "peak_mb": torch.cuda.max_memory_allocated() / 2**20, "coverage": cover})
        print(f"[render] packed={packed}: fwd {t_f:.2f} ms, fwd+bwd {t_fb:.2f} ms, mean alpha {cover:.2f}", flush=True)
    return rows


def speedup(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    scene = random_scene(args.speedup_n, device, seed=1)
    res = {}
    for backend in ("gsplat", "torch"):
        fwd, fwd_bwd = render_fns(scene, args.speedup_res, args.speedup_res, device, backend)
        res[backend] = {"fwd_ms": time_ms(fwd, warmup=2, rep=7), "fwd_bwd_ms": time_ms(fwd_bwd, warmup=2, rep=7)}
        print(f"[speedup] {backend}: {res[backend]}", flush=True)
    # the two agree on this scene
    a = render_fns(scene, args.speedup_res, args.speedup_res, device, "gsplat")[0]()
    b = render_fns(scene, args.speedup_res, args.speedup_res, device, "torch")[0]()
    res["max_abs_diff_rgb"] = float((a["rgb"] - b["rgb"]).abs().max())
    res["mean_abs_diff_rgb"] = float((a["rgb"] - b["rgb"]).abs().mean())
    res["fwd_speedup"] = res["torch"]["fwd_ms"] / res["gsplat"]["fwd_ms"]
    res["fwd_bwd_speedup"] = res["torch"]["fwd_bwd_ms"] / res["gsplat"]["fwd_bwd_ms"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="render,speedup,recon")
    ap.add_argument("--recon-methods", default="gaussians,nerf")
    ap.add_argument("--gs-variants", default="recipe:",
                    help="gaussian runs, 'name:override,override;name2:...' (overrides of configs/gaussian-recon.yaml)")
    ap.add_argument("--dataroot", default="load/scenes/quickstart-256")
    ap.add_argument("--resolution", type=int, default=256, help="generate the scene at this size if it is missing")
    ap.add_argument("--target", type=float, default=30.0)
    ap.add_argument("--eval-every", type=int, default=100, help="gaussian steps between held-out evaluations")
    ap.add_argument("--eval-views", type=int, default=5)
    ap.add_argument("--time-limit", type=float, default=40.0, help="gaussian training seconds")
    ap.add_argument("--nerf-time-limit", type=float, default=15.0, help="NeRF training seconds")
    ap.add_argument("--max-steps", type=int, default=7000)
    ap.add_argument("--render-n", type=int, default=1_000_000)
    ap.add_argument("--render-width", type=int, default=1920)
    ap.add_argument("--render-height", type=int, default=1080)
    ap.add_argument("--speedup-n", type=int, default=10_000)
    ap.add_argument("--speedup-res", type=int, default=256)
    ap.add_argument("--json", default=None)
    ap.add_argument("gs_overrides", nargs="*", help="config overrides for the gaussian run")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parts = args.parts.split(",")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    result: Dict[str, Any] = {"gpu": gpu, "args": vars(args), "torch": torch.__version__}
    try:
        import gsplat

        result["gsplat"] = gsplat.__version__
    except ImportError:
        result["gsplat"] = None
    def save() -> None:  # after every part: a run cut short keeps what it measured
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)

    if "recon" in parts and not os.path.isdir(args.dataroot):
        from threestudio.data.synthetic_scene import make_scene

        make_scene(args.dataroot, resolution=args.resolution)
    def recon() -> List[Dict[str, Any]]:
        rows = []
        for spec in args.gs_variants.split(";") if "gaussians" in args.recon_methods else []:
            name, _, ov = spec.partition(":")
            rows.append(gaussian_recon(args, device, name, [o for o in ov.split(",") if o]))
            result["recon"] = rows
            save()
        try:
            if "nerf" in args.recon_methods:
                rows.append(nerf_recon(args, device))
        except Exception as e:  # pragma: no cover
            import traceback

            traceback.print_exc()
            result["nerf_error"] = repr(e)
        return rows

    jobs = {"recon": recon,
            "render": lambda: render_1m(args, device), "speedup": lambda: speedup(args, device)}
    for name in parts:
        if name != "recon" and device.type != "cuda":
            print(f"[{name}] skipped: needs a CUDA GPU")
            continue
        try:  # one part failing must not cost the others (GPU time is scarce)
            result[name] = jobs[name]()
        except Exception as e:  # pragma: no cover - reported, not hidden
            import traceback

            traceback.print_exc()
            result[f"{name}_error"] = repr(e)
        save()
    print(f"\nGaussian splatting, {gpu}, torch {torch.__version__}, gsplat {result['gsplat']}\n")
    if "recon" in result:
        print(f"Quick-start scene {args.resolution}^2, held-out PSNR on {args.eval_views} views, target "
              f"{args.target} dB (training time only)\n")
        print("| method | steps | train s | s to target | steps to target | final PSNR |")
        print("|---|---|---|---|---|---|")
        for r in result["recon"]:
            tt = "not reached" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f}"
            print(f"| {r['name']} | {r['steps']} | {r['train_s']:.1f} | {tt} | {r['steps_to_target']} | "
                  f"{r['final_psnr']} |")
        print()
    if "render" in result:
        print("| render | fwd ms | fwd+bwd ms | peak MB |")
        print("|---|---|---|---|")
        for r in result["render"]:
            print(f"| {r['what']} | {r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | {r['peak_mb']:.0f} |")
        print()
    if "speedup" in result:
        s = result["speedup"]
        print(f"| {args.speedup_n} gaussians, {args.speedup_res}^2 | gsplat ms | PyTorch reference ms | speed-up |")
        print("|---|---|---|---|")
        print(f"| forward | {s['gsplat']['fwd_ms']:.2f} | {s['torch']['fwd_ms']:.1f} | {s['fwd_speedup']:.0f}x |")
        print(f"| forward+backward | {s['gsplat']['fwd_bwd_ms']:.2f} | {s['torch']['fwd_bwd_ms']:.1f} | "
              f"{s['fwd_bwd_speedup']:.0f}x |")
        print(f"\n(max |rgb difference| {s['max_abs_diff_rgb']:.2e}, mean {s['mean_abs_diff_rgb']:.2e})")


if __name__ == "__main__":
    main()
