#!/usr/bin/env python
"""Benchmark packed volume rendering and occupancy-grid sampling: our torch path vs nerfacc's CUDA path.

Cases (all on one CUDA device, medians of CUDA-event timings after warm-up, via triton.testing.do_bench):

* ``weights``: render_weight_from_density forward, S packed samples.
* ``composite_fwd_bwd``: composite (weights + rgb/opacity/depth accumulation) forward and backward to sigmas and rgbs.
* ``sample``: OccupancyGrid.sample of a 512x512 view through a 32^3 grid holding a sphere, 512 steps across the box.

The baseline of each case is nerfacc, timed in the same run; ``torch_compile`` is our torch path under
``torch.compile(dynamic=True)`` (weights only). A device-to-device copy gives the memory bandwidth used for the floor:
``weights`` must read t_starts, t_ends, sigmas (4 B each) and ray_indices (8 B) and write 3 x 4 B per sample.

    python scripts/bench/bench_volume_rendering.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from threestudio.ops import cameras as C
from threestudio.ops import volume_rendering as VR
from threestudio.ops.occupancy_grid import OccupancyGrid


def make_packed(n_rays: int, mean_spr: int, device: str, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    counts = torch.randint(0, 2 * mean_spr + 1, (n_rays,), generator=g).to(device)
    ri = torch.repeat_interleave(torch.arange(n_rays, device=device), counts)
    S = ri.shape[0]
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    j = (torch.arange(S, device=device) - first).float()
    dt = 2.0 / (2 * mean_spr)
    ts = 1.0 + j * dt
    te = ts + dt
    sig = torch.rand(S, device=device) * 5.0
    return ri, ts, te, sig


def bench(fn, warmup=25, rep=200) -> float:
    """Median milliseconds of ``fn`` (CUDA events via triton.testing.do_bench; a host timer on CPU for smoke runs)."""
    if not torch.cuda.is_available():
        import statistics
        import time

        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def copy_bandwidth_gbs(device: str) -> float:
    x = torch.empty(1 << (28 if device == "cuda" else 24), dtype=torch.float32, device=device).uniform_()  # 1 GiB
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    return 2 * x.numel() * 4 / (ms * 1e-3) / 1e9


def bench_packed(n_rays: int, spr: int, dev: str, has_nerfacc: bool, compiled, gbs: float):
    """Time weights (forward) and composite (forward + backward) at one size. Returns (rows, compiled or None)."""
    ri, ts, te, sig = make_packed(n_rays, spr, dev)
    S = ri.shape[0]
    rgb = torch.rand(S, 3, device=dev)
    floor_ms = S * 32 / (gbs * 1e9) * 1e3
    case = f"{n_rays} rays, S={S / 1e6:.2f}M"
    rows = []

    t = {"torch": bench(lambda: VR.render_weight_from_density(ts, te, sig, ri, n_rays, backend="torch"))}
    if has_nerfacc:
        t["nerfacc"] = bench(lambda: VR.render_weight_from_density(ts, te, sig, ri, n_rays, backend="nerfacc"))
    if compiled is not None:
        try:
            compiled(ts, te, sig, ri)
            t["torch_compile"] = bench(lambda: compiled(ts, te, sig, ri))
        except Exception as e:  # noqa: BLE001 - report and go on without the variant
            print(f"torch.compile variant failed: {e!r}"[:500])
            compiled = None
    rows.append({"op": "weights", "case": case, "S": S, "ms": t, "floor_ms": floor_ms})

    def fwd_bwd(backend: str):
        s = sig.detach().requires_grad_(True)
        c = rgb.detach().requires_grad_(True)

        def run():
            out = VR.composite(ts, te, s, ri, n_rays, c, backend=backend)
            (out["rgb"].sum() + out["depth"].sum() + out["opacity"].sum()).backward()

        return run

    t = {"torch": bench(fwd_bwd("torch"))}
    if has_nerfacc:
        t["nerfacc"] = bench(fwd_bwd("nerfacc"))
    rows.append({"op": "composite_fwd_bwd", "case": case, "S": S, "ms": t, "floor_ms": None})
    return rows, compiled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="write results to this JSON file")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--sizes", default="4096x512,65536x128,262144x64", help="n_rays x mean samples per ray, comma list")
    ap.add_argument("--image", type=int, default=512, help="image side for the sampling case")
    ap.add_argument("--device", default="cuda", help="cuda (timings) or cpu (a smoke run of the script only)")
    args = ap.parse_args()
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this benchmark times CUDA kernels and needs a GPU (use --device cpu for a smoke run)")
    has_nerfacc = dev == "cuda" and VR.nerfacc_cuda_available()
    gbs = copy_bandwidth_gbs(dev)
    rows = []
    results = {
        "gpu": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
        "torch": torch.__version__,
        "copy_GBps": gbs,
        "cases": rows,
    }

    compiled = None
    if not args.no_compile and dev == "cuda":
        compiled = torch.compile(VR._weights_from_density_torch, dynamic=True)

    for spec in args.sizes.split(","):
        n_rays, spr = (int(v) for v in spec.split("x"))
        new_rows, compiled = bench_packed(n_rays, spr, dev, has_nerfacc, compiled, gbs)
        rows.extend(new_rows)

    # occupancy-grid sampling of a 512x512 view
    H = W = args.image
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], 32).to(dev)
    grid.update(lambda x: (x.norm(dim=-1) < 0.7).float() * 100.0, step=0, value_scale=0.01)
    c2w = C.c2w_from_spherical(15.0, 30.0, 2.5).to(dev)
    dirs = C.get_ray_directions(H, W, float(C.fovy_to_focal(math.radians(60.0), H)), device=dev)
    o, d = C.get_rays(dirs, c2w)
    o, d = o.reshape(-1, 3).contiguous(), d.reshape(-1, 3).contiguous()
    step = 1.732 * 2 / 512
    S = grid.sample(o, d, render_step_size=step, backend="torch")[0].shape[0]
    t = {"torch": bench(lambda: grid.sample(o, d, render_step_size=step, backend="torch"), rep=500)}
    if has_nerfacc:
        t["nerfacc"] = bench(lambda: grid.sample(o, d, render_step_size=step, backend="nerfacc"), rep=500)
    rows.append({"op": f"sample_{H}x{W}", "case": f"{H * W} rays, S={S / 1e6:.2f}M", "S": S, "ms": t, "floor_ms": None})

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)

    print(f"\ndevice: {results['gpu']}, torch {results['torch']}, copy bandwidth {gbs:.0f} GB/s")
    print("\n| op | case | torch ms | nerfacc ms | torch.compile ms | floor ms | nerfacc / torch |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ms = r["ms"]
        f = {k: f"{ms[k]:.3f}" for k in ms}.get
        ratio = f"{ms['nerfacc'] / ms['torch']:.2f}" if "nerfacc" in ms else "-"
        floor = f"{r['floor_ms']:.3f}" if r["floor_ms"] else "-"
        print(
            f"| {r['op']} | {r['case']} | {f('torch', '-')} | {f('nerfacc', '-')} | {f('torch_compile', '-')} "
            f"| {floor} | {ratio} |"
        )


if __name__ == "__main__":
    main()
