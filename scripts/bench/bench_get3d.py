#!/usr/bin/env python
"""Benchmark the GET3D generator and a GET3D + NADA step (full-size generator: random weights, official shapes).

Workloads (CUDA-synchronised wall times, median of ``--reps`` after warm-up; peak memory from
``torch.cuda.max_memory_allocated``):

* ``mesh``: one textured mesh: z -> ws (psi 0.7) -> triplanes -> SDF/deformation on the tet_res-90 grid ->
  marching tets -> one 1024^2 render (rasterize, texture field at visible pixels, to_rgb, antialiased mask).
* ``export``: the same mesh's UV unwrap (xatlas) + 1024^2 texture bake (``mesh-exporter``), host time, once.
* ``nada``: one NADA training step at batch 3 x n_views 8, 1024^2 renders, with a ViT-B/32-shaped CLIP (random
  weights, written with save_pretrained and loaded with from_pretrained), layer selection (12 latents) included.

Baseline timed in the same run: the per-sample path of the original code (a Python loop over the batch: one mesh
extraction and one render per latent; for ``nada``, the B latents one by one with gradient accumulation, the same
loss). The ratio column is baseline / ours.

    python scripts/bench/bench_get3d.py --json out.json
    python scripts/bench/bench_get3d.py --device cpu --small   # a smoke run of the script
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

import torch

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, REPO)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], Any], dev: torch.device, reps: int, warmup: int = 1) -> Dict[str, float]:
    for _ in range(warmup):
        fn()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(reps):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_gib": peak}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="tiny sizes (a smoke run of the script on a CPU)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--nada-warmup", type=int, default=4, help="NADA steps of each kind before timing")
    ap.add_argument("--skip", default="", help="comma list of workloads to skip: mesh,export,nada")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    skip = set(filter(None, args.skip.split(",")))

    from threestudio.utils.extensions import import_extension

    import_extension(os.path.join(REPO, "custom", "get3d"), namespace="custom")
    from custom.get3d.cameras import mvp_from_angles, sample_angles, turntable_angles
    from custom.get3d.generator import GET3DGenerator

    if args.small:
        gcfg = dict(z_dim=32, w_dim=32, tri_plane_resolution=16, channel_base=256, channel_max=32, tet_res=16)
        res, batch, n_views, sel_batch, tex_size = 64, 2, 2, 2, 64
    else:
        gcfg = dict(tet_res=90)
        res, batch, n_views, sel_batch, tex_size = 1024, 3, 8, 12, 1024
    torch.manual_seed(0)
    gen = GET3DGenerator(gcfg).to(dev).eval()
    zd = gen.cfg.z_dim
    results: Dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                               "generator_params_M": sum(p.numel() for p in gen.parameters()) / 1e6,
                               "tet_res": gen.cfg.tet_res, "render_res": res, "torch": torch.__version__,
                               "workloads": {}}
    rows: List[List[str]] = []

    # ---------------------------------------------------------------------------------- one textured mesh
    z = torch.randn(batch, 2, zd, generator=torch.Generator().manual_seed(1)).to(dev)
    az, po = turntable_angles(8, device=dev)
    mvp1 = mvp_from_angles(az[4:5], po[4:5])[None]

    @torch.no_grad()
    def one_mesh(i: int = 0):
        ws = gen.map(z[i:i + 1, 0], z[i:i + 1, 1], 0.7)
        return gen.synthesize(*ws, mvp1, res)

    if "mesh" not in skip:
        r = timed(one_mesh, dev, args.reps)
        out = one_mesh()
        r["faces"] = int(out["meshes"]["faces"].shape[0])
        r["vertices"] = int(out["meshes"]["verts"].shape[0])
        # batched (B samples, one call) vs the original per-sample loop, same work
        mvpb = mvp1.expand(batch, -1, -1, -1)

        @torch.no_grad()
        def batched():
            ws = gen.map(z[:, 0], z[:, 1], 0.7)
            return gen.synthesize(*ws, mvpb, res)

        @torch.no_grad()
        def loop():
            return [one_mesh(i) for i in range(batch)]

        rb, rl = timed(batched, dev, args.reps), timed(loop, dev, args.reps)
        r.update(batched_B=batch, batched_median_s=rb["median_s"], loop_median_s=rl["median_s"],
                 batched_peak_gib=rb["peak_gib"], ratio_loop_over_batched=rl["median_s"] / rb["median_s"])
        results["workloads"]["mesh"] = r
        rows.append(["one textured mesh + 1 render", f"{r['median_s'] * 1e3:.1f} ms", f"{r['peak_gib']:.2f} GiB",
                     f"{r['faces']} faces"])
        rows.append([f"B={batch} batched vs per-sample loop", f"{rb['median_s'] * 1e3:.1f} ms",
                     f"{rl['median_s'] * 1e3:.1f} ms (loop)", f"x{r['ratio_loop_over_batched']:.2f}"])

    # ---------------------------------------------------------------------------------- export (UV + bake)
    if "export" not in skip:
        from threestudio.utils.saving import SaverMixin

        from custom.get3d.export import export_meshes

        class _Saver(SaverMixin):
            pass

        saver = _Saver()
        with tempfile.TemporaryDirectory() as tmp:
            saver.set_save_dir(tmp)
            _sync(dev)
            t0 = time.perf_counter()
            written = export_meshes(saver, gen, gen, z[:1], 0.7, "export",
                                    {"texture_size": tex_size, "formats": ["glb"], "xatlas_subprocess": False})
            dt = time.perf_counter() - t0
            size = os.path.getsize(written[0])
        results["workloads"]["export"] = {"seconds": dt, "glb_bytes": size, "texture_size": tex_size}
        rows.append([f"export: xatlas + {tex_size}^2 bake + GLB", f"{dt:.2f} s", "", f"{size / 1e6:.1f} MB"])

    # ---------------------------------------------------------------------------------- NADA step
    if "nada" not in skip:
        try:
            from custom.get3d.clip_loss import save_random_clip
            from custom.get3d.system import GET3DNada

            with tempfile.TemporaryDirectory() as tmp:
                clip_dir = save_random_clip(os.path.join(tmp, "clip"), preset="tiny" if args.small else "vit-b-32")
                sysm = GET3DNada(dict(generator=gcfg, clip_models=[clip_dir], clip_models_weight=[1.0],
                                      batch=batch, n_views=n_views, auto_layer_batch=sel_batch, auto_layer_k=20,
                                      render_resolution=res, sample_1st=60, n_select=6, iter_2nd=1))
                sysm.to(dev)
                sysm.build_clip()
            opt = sysm.configure_optimizers()
            g = torch.Generator().manual_seed(2)
            step = [0]

            def draw():
                a, p = sample_angles((batch, n_views), "shapenet_car", g, dev)
                sa, sp = sample_angles((sel_batch, 1), "shapenet_car", g, dev)
                zz = torch.randn(2, sel_batch, zd, generator=g).to(dev)
                return {"azimuth": a, "polar": p, "sel_azimuth": sa, "sel_polar": sp, "sel_z_tex": zz[0],
                        "sel_z_geo": zz[1]}

            def nada_step():
                sysm.adapt_step(opt, draw(), step[0])
                step[0] += 1

            def loop_step():
                b = draw()
                from custom.get3d import layers as L

                L.apply_selection(sysm.generator, sysm.select_layers(b))
                opt.zero_grad(set_to_none=True)
                idx = sysm.batch_latents(step[0])
                for i in range(len(idx)):
                    bi = dict(b, azimuth=b["azimuth"][i:i + 1], polar=b["polar"][i:i + 1])
                    (sysm.nada_losses(idx[i:i + 1], bi)["loss"] / len(idx)).backward()
                opt.step()
                step[0] += 1

            # mesh sizes change every step, so Triton compiles a few shape specialisations during the first
            # steps: warm both paths up for several steps, then interleave them so that neither pays the compiles
            for _ in range(args.nada_warmup):
                nada_step()
                loop_step()
            tb, tl_ = [], []
            for _ in range(args.reps):
                tb.append(timed(nada_step, dev, 1, warmup=0))
                tl_.append(timed(loop_step, dev, 1, warmup=0))
            r = {"median_s": statistics.median(t["median_s"] for t in tb),
                 "min_s": min(t["median_s"] for t in tb), "peak_gib": max(t["peak_gib"] for t in tb)}
            rl = {"median_s": statistics.median(t["median_s"] for t in tl_),
                  "peak_gib": max(t["peak_gib"] for t in tl_)}
            rs = timed(lambda: sysm.select_layers(draw()), dev, args.reps)

            r.update(selection_median_s=rs["median_s"], loop_median_s=rl["median_s"],
                     ratio_loop_over_batched=rl["median_s"] / r["median_s"], batch=batch, n_views=n_views,
                     auto_layer_batch=sel_batch, clip="ViT-B/32 shapes (random)" if not args.small else "tiny")
            results["workloads"]["nada"] = r
            rows.append([f"NADA step B={batch} x {n_views} views @{res}", f"{r['median_s'] * 1e3:.0f} ms",
                         f"{r['peak_gib']:.2f} GiB", f"selection {rs['median_s'] * 1e3:.0f} ms"])
            rows.append(["NADA step, per-latent loop (baseline)", f"{rl['median_s'] * 1e3:.0f} ms",
                         f"{rl['peak_gib']:.2f} GiB", f"x{r['ratio_loop_over_batched']:.2f}"])
        except ImportError as e:  # transformers missing on this machine
            results["workloads"]["nada"] = {"error": f"{type(e).__name__}: {e}"}
            rows.append(["NADA step", "skipped", "", str(e)[:40]])

    w = [max(len(r[i]) for r in rows + [["workload", "time", "memory", "note"]]) for i in range(4)]
    for r in [["workload", "time", "memory", "note"]] + rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
