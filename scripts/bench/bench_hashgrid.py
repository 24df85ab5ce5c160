#!/usr/bin/env python
"""Benchmark the multiresolution hash encoding: Triton kernel variants against the PyTorch reference.

Problem: 2^18 points, 16 levels x 2 features, T = 2^19, base resolution 16, per-level scale 1.4473.
Timed on one CUDA device (medians of CUDA-event timings after warm-up, triton.testing.do_bench, which also flushes
L2 before each repetition). Inputs rotate among ``--sets`` freshly drawn sets. Distributions: ``uniform`` (points
uniform in [0,1]^3) and ``rays`` (``--samples`` ordered samples along each of N/samples random rays through the cube,
what a NeRF renderer sends). "fwd+bwd" is the forward plus the gradient w.r.t. the table (x needs no gradient),
"+dx" adds the gradient w.r.t. x. Extra diagnostics: per-level backward times (--per-level), and the
"floor" kernels (--floors) (the same number of random 8-byte atomics / gathers with no index math or inputs).

    python scripts/bench/bench_hashgrid.py --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from threestudio.ops.hashgrid import hash_encode  # noqa: E402
from threestudio.ops.hashgrid.reference import hash_encode_reference  # noqa: E402

_PLAIN = dict(pair_x=False, aggregate_levels=0, fwd_transposed=False, pair_loads=False)  # ideas added one by one
VARIANTS = {
    # the straightforward kernel: scalar fp32 atomics with tl.atomic_add's default (acq_rel) ordering
    "naive": dict(_PLAIN, vector_red=False, atomic_sem="acq_rel"),
    "relaxed": dict(_PLAIN, vector_red=False),  # scalar atomics, relaxed (red instead of atom)
    "v2": dict(_PLAIN),  # red.global.add.v2.f32 per feature pair
    "v2_px": dict(_PLAIN, pair_x=True),  # + red.v4 for x-corner pairs in one aligned 16-byte block
    "v2_px_agg": dict(_PLAIN, pair_x=True, aggregate_levels=-1),  # + run aggregation on the dense levels
    "v2_px_agg_T": dict(pair_loads=False),  # + forward into [L, N, F] then transpose
    "default": dict(),  # TritonConfig(): + paired 16-byte loads in the forward
    "default_noT": dict(fwd_transposed=False),
    "default_b128": dict(block=128, bwd_block=128),
    "default_b512w8": dict(block=512, bwd_block=512, num_warps=8, bwd_num_warps=8),
    "v2_lpp4": dict(_PLAIN, levels_per_program=4),
    "v2_lpp16": dict(_PLAIN, levels_per_program=16),
}


DEVICE = "cuda"


def bench(fn, warmup: int = 25, rep: int = 100) -> float:
    """Median milliseconds of ``fn`` (CUDA events; a host timer for the CPU smoke run)."""
    if DEVICE != "cuda":
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def uniform_points(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, 3, device=DEVICE, generator=gen)


def ray_points(n: int, gen: torch.Generator, samples: int = 128) -> torch.Tensor:
    """``samples`` sorted points along each of n/samples rays from a sphere of radius 1.2 through the unit cube."""
    r = n // samples
    o = torch.nn.functional.normalize(torch.randn(r, 3, device=DEVICE, generator=gen), dim=-1) * 1.2 + 0.5
    target = 0.5 + 0.3 * (torch.rand(r, 3, device=DEVICE, generator=gen) - 0.5)
    d = torch.nn.functional.normalize(target - o, dim=-1)
    inv = 1.0 / d
    t0, t1 = (0.0 - o) * inv, (1.0 - o) * inv
    t_near = torch.minimum(t0, t1).amax(-1, keepdim=True)
    t_far = torch.maximum(t0, t1).amin(-1, keepdim=True)
    u = (torch.arange(samples, device=DEVICE) + torch.rand(r, samples, device=DEVICE, generator=gen)) / samples
    t = t_near + (t_far - t_near) * u
    return (o[:, None, :] + t[..., None] * d[:, None, :]).reshape(-1, 3).clamp(0, 1).contiguous()


def make_sets(dist: str, n: int, n_out: int, k: int, seed: int, samples: int):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    sets = []
    for _ in range(k):
        x = uniform_points(n, gen) if dist == "uniform" else ray_points(n, gen, samples)
        sets.append((x, torch.randn(n, n_out, device=DEVICE, generator=gen)))
    return sets


def timers(encode, sets, table):
    """(fwd, fwd+bwd, fwd+bwd with dx) timing closures rotating over the input sets."""
    it = itertools.cycle(sets)

    def fwd():
        x, _ = next(it)
        with torch.no_grad():
            encode(x, table)

    def fwd_bwd():
        x, g = next(it)
        out = encode(x, table)
        torch.autograd.grad(out, table, g)

    dx_sets = itertools.cycle([(x.clone().requires_grad_(), g) for x, g in sets])

    def fwd_bwd_dx():
        x, g = next(dx_sets)
        out = encode(x, table)
        torch.autograd.grad(out, [table, x], g)

    return fwd, fwd_bwd, fwd_bwd_dx


def floor_kernels():
    """Random 8-byte atomics / gathers, as many as the backward / forward issue, with no inputs or index math."""
    import triton
    import triton.language as tl

    from threestudio.ops.hashgrid.triton_backend import _red_add_v2

    @triton.jit
    def red_floor(g_ptr, N, T, BLOCK: tl.constexpr, VEC: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        base = tl.program_id(1) * T
        v = tl.full((BLOCK,), 1.0, tl.float32)
        for c in tl.static_range(8):
            row = base + ((((offs + c * 7919) * -1640531535) >> 7) & (T - 1))
            if VEC:
                _red_add_v2(g_ptr + row * 2, v, v, m)
            else:
                tl.atomic_add(g_ptr + row * 2, v, mask=m, sem="relaxed")
                tl.atomic_add(g_ptr + row * 2 + 1, v, mask=m, sem="relaxed")

    @triton.jit
    def load_floor(t_ptr, o_ptr, N, T, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        base = tl.program_id(1) * T
        acc = tl.zeros((BLOCK,), tl.int64)
        for c in tl.static_range(8):
            row = base + ((((offs + c * 7919) * -1640531535) >> 7) & (T - 1))
            acc += tl.load(t_ptr + row, mask=m, other=0)
        tl.store(o_ptr + tl.program_id(1) * N + offs, acc, mask=m)

    return red_floor, load_floor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2**18)
    ap.add_argument("--levels", type=int, default=16)
    ap.add_argument("--features", type=int, default=2)
    ap.add_argument("--log2t", type=int, default=19)
    ap.add_argument("--base", type=float, default=16)
    ap.add_argument("--scale", type=float, default=1.447269237440378)
    ap.add_argument("--dists", default="uniform,rays")
    ap.add_argument("--samples", type=int, default=128, help="samples per ray for the rays distribution")
    ap.add_argument("--variants", default="all", help="comma list of " + ",".join(VARIANTS))
    ap.add_argument("--default-only-fp16", action="store_true", help="time fp16 tables for the default variant only")
    ap.add_argument("--sets", type=int, default=4)
    ap.add_argument("--rep", type=int, default=100, help="do_bench repetition time (ms) for the Triton timings")
    ap.add_argument("--skip-ref", action="store_true")
    ap.add_argument("--per-level", action="store_true", help="per-level backward times (one launch per level)")
    ap.add_argument("--floors", action="store_true", help="time the floor kernels (random atomics / gathers)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--cpu-smoke", action="store_true", help="run everything tiny on CPU (TRITON_INTERPRET=1)")
    args = ap.parse_args()
    global DEVICE
    if args.cpu_smoke:
        DEVICE = "cpu"
    else:
        assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU (or --cpu-smoke)"

    from threestudio.ops.hashgrid.triton_backend import (
        DEFAULT_CONFIG,
        TritonConfig,
        _launch_backward,
        _level_tensors,
        _n_aggregate,
        hash_encode_triton,
    )

    L, T, F, N = args.levels, 2**args.log2t, args.features, args.n
    kw = dict(base_resolution=args.base, per_level_scale=args.scale)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    tables = {
        "fp32": (torch.rand(L, T, F, device=DEVICE, generator=gen) * 2 - 1).requires_grad_(),
    }
    tables["fp16"] = tables["fp32"].detach().half().requires_grad_()
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    dev = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (interpreter smoke run)"
    res = dict(device=dev, torch=torch.__version__, n=N, levels=L, features=F, log2t=args.log2t, rows=[])
    import triton

    res["triton"] = triton.__version__
    print(f"# {dev}, torch {torch.__version__}, triton {triton.__version__}; N={N} L={L} F={F} T=2^{args.log2t}")

    # bandwidth probe: device-to-device copy of 1 GiB
    a = torch.empty(2**28 if DEVICE == "cuda" else 2**10, device=DEVICE)
    b = torch.empty_like(a)
    t = bench(lambda: b.copy_(a))
    res["copy_TBps"] = 2 * a.numel() * 4 / t / 1e9
    del a, b
    print(f"copy bandwidth {res['copy_TBps']:.2f} TB/s")

    def row(dist, impl, dtype, fwd, fb, fbdx=None):
        r = dict(dist=dist, impl=impl, table=dtype, fwd_ms=fwd, fwd_bwd_ms=fb, fwd_bwd_dx_ms=fbdx)
        res["rows"].append(r)
        extra = f"  +dx {fbdx:8.3f}" if fbdx else ""
        print(f"{dist:8s} {impl:18s} {dtype:5s} fwd {fwd:8.3f}  fwd+bwd {fb:8.3f}{extra}", flush=True)

    for dist in args.dists.split(","):
        sets = make_sets(dist, N, L * F, args.sets, seed={"uniform": 1, "rays": 2}.get(dist, 3), samples=args.samples)
        if not args.skip_ref:
            for dt in ("fp32",):
                ref = lambda x, tab: hash_encode(x, tab, **kw, backend="torch")  # noqa: E731
                f, fb, fbdx = timers(ref, sets, tables[dt])
                row(dist, "torch_ref", dt, bench(f, 25, 400), bench(fb, 25, 400), bench(fbdx, 25, 400))
                # the same reference with ``flat[rows]`` (sort-based index_put_ backward), a slower baseline
                refi = lambda x, tab: hash_encode_reference(x, tab, **kw, _gather="indexing")  # noqa: E731
                f, fb, _ = timers(refi, sets, tables[dt])
                row(dist, "torch_ref_indexing", dt, bench(f, 25, 400), bench(fb, 25, 400))
        for name in names:
            cfg = TritonConfig(**VARIANTS[name])
            for dt in ("fp32", "fp16"):
                if dt == "fp16" and args.default_only_fp16 and name != "default":
                    continue
                enc = lambda x, tab, cfg=cfg: hash_encode_triton(x, tab, **kw, config=cfg)  # noqa: E731
                f, fb, fbdx = timers(enc, sets, tables[dt])
                fbdx_t = bench(fbdx, rep=args.rep) if (dt == "fp32" and name in ("default", "naive")) else None
                row(dist, name, dt, bench(f, rep=args.rep), bench(fb, rep=args.rep), fbdx_t)

        if args.per_level:
            levels = _level_tensors(L, T, args.base, args.scale, torch.device(DEVICE))
            x, g = sets[0]
            gtab = torch.zeros(L, T, F, device=DEVICE)
            tab = tables["fp32"].detach()
            per = []
            for cfg_name in ("v2", "v2_px_agg", "naive"):
                cfg = TritonConfig(**VARIANTS[cfg_name])
                na = _n_aggregate(L, T, args.base, args.scale, cfg)
                ts = [bench(lambda lv=lv: _launch_backward(x, tab, g, levels, L, False, cfg, (lv, lv + 1), gtab, na),
                            rep=40) for lv in range(L)]  # fmt: skip
                per.append(dict(dist=dist, variant=cfg_name, per_level_ms=ts))
                print(f"{dist:8s} per-level bwd {cfg_name:8s}: " + " ".join(f"{t_:.3f}" for t_ in ts), flush=True)
            res.setdefault("per_level", []).extend(per)

    if args.floors:
        red_floor, load_floor = floor_kernels()
        gtab = torch.zeros(L, T, F, device=DEVICE)
        tab64 = tables["fp32"].detach().view(torch.int64)
        o = torch.empty(L, N, dtype=torch.int64, device=DEVICE)
        grid = (triton.cdiv(N, 256), L)
        fl = dict(
            red_v2_ms=bench(lambda: red_floor[grid](gtab, N, T, BLOCK=256, VEC=True)) if DEVICE == "cuda" else 0,
            red_scalar_ms=bench(lambda: red_floor[grid](gtab, N, T, BLOCK=256, VEC=False)),
            gather_ms=bench(lambda: load_floor[grid](tab64, o, N, T, BLOCK=256)),
            zero_grad_ms=bench(lambda: gtab.zero_()),
        )
        res["floors"] = fl
        print("floors: " + ", ".join(f"{k} {v:.3f}" for k, v in fl.items()))

    # summary table (last): ratios against the torch reference of the same distribution
    print()
    print("| dist | impl | table | fwd ms | fwd+bwd ms | fwd+bwd+dx ms | ref/impl fwd | ref/impl fwd+bwd "
          "| ref_indexing/impl fwd+bwd |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    refs = {r["dist"]: r for r in res["rows"] if r["impl"] == "torch_ref"}
    refis = {r["dist"]: r for r in res["rows"] if r["impl"] == "torch_ref_indexing"}
    for r in res["rows"]:
        ref, refi = refs.get(r["dist"]), refis.get(r["dist"])
        rf = f"{ref['fwd_ms'] / r['fwd_ms']:.1f}x" if ref else "-"
        rb = f"{ref['fwd_bwd_ms'] / r['fwd_bwd_ms']:.1f}x" if ref else "-"
        rbi = f"{refi['fwd_bwd_ms'] / r['fwd_bwd_ms']:.1f}x" if refi else "-"
        dx = f"{r['fwd_bwd_dx_ms']:.3f}" if r["fwd_bwd_dx_ms"] else "-"
        print(f"| {r['dist']} | {r['impl']} | {r['table']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | {dx} "
              f"| {rf} | {rb} | {rbi} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"(total {time.time() - t0:.0f} s)")
