#!/usr/bin/env python
"""Benchmark the mesh rasterization ops: rasterize + interpolate (3-channel vertex colours) + antialias, forward and
backward, at 512^2 with a batch of 4 views, on subdivided icospheres of 20k, 82k, 328k and 1.3M triangles.

Timings are medians of CUDA-event timings after warm-up (``triton.testing.do_bench``). In the same run:

* ``triton``: our Triton kernels (``backend="auto"`` on CUDA);
* ``torch``: our vectorised PyTorch backend on the same GPU (the baseline timed in the same run);
* ``cpu``: the PyTorch backend on this machine's CPU (a sanity figure: the speed-up of the GPU path over the same
  code on the CPU), with a host timer and few repetitions;
* ``nvdiffrast``: when it is importable (CUDA context), timed in this same process; the "ours / nvdiffrast" column
  divides by these figures only. When it is not importable the script says why and prints no ratio (figures from
  another run or card are never used). To compare, build it on the GPU machine from a local copy of its source:
  ``pip install --no-build-isolation ./nvdiffrast`` (or ``bash scripts/bench/gpu_rasterize.sh DIR``).

The topology table that antialias needs is rebuilt in every timed iteration (as nvdiffrast does when no
``topology_hash`` is passed).

    python scripts/bench/bench_rasterize.py --json out.json
    python scripts/bench/bench_rasterize.py --device cpu --subdiv 3,4 --res 128   # a smoke run of the script
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from threestudio.ops import cameras as C  # noqa: E402
from threestudio.ops import rasterize as R  # noqa: E402

def icosphere(subdiv: int, device: str) -> tuple:
    """Unit icosphere with 20 * 4^subdiv triangles (vertices shared, counter-clockwise outward)."""
    t = (1.0 + math.sqrt(5.0)) / 2.0
    v = torch.tensor([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t],
                      [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=torch.float64, device=device)
    f = torch.tensor([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
                      [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
                      [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]], dtype=torch.long, device=device)
    v = v / v.norm(dim=-1, keepdim=True)
    for _ in range(subdiv):
        e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]], 0)
        key = torch.minimum(e[:, 0], e[:, 1]) * v.shape[0] + torch.maximum(e[:, 0], e[:, 1])
        uniq, inv = torch.unique(key, return_inverse=True)
        a, b = torch.div(uniq, v.shape[0], rounding_mode="floor"), uniq % v.shape[0]
        mid = v[a] + v[b]
        mid = mid / mid.norm(dim=-1, keepdim=True)
        m = (inv + v.shape[0]).view(3, -1).t()  # midpoints of (0,1), (1,2), (2,0)
        v = torch.cat([v, mid], 0)
        f = torch.cat([torch.stack([f[:, 0], m[:, 0], m[:, 2]], 1), torch.stack([f[:, 1], m[:, 1], m[:, 0]], 1),
                       torch.stack([f[:, 2], m[:, 2], m[:, 1]], 1), m], 0)
    return v.float(), f.to(torch.int32)


def cameras(n: int, res: int, device: str) -> torch.Tensor:
    """mvp [n, 4, 4]: views around the unit sphere at distance 3, fovy 45 degrees (the sphere fills most of it)."""
    c2w = C.c2w_from_spherical(torch.tensor([15.0, -10.0, 30.0, 0.0])[:n], torch.tensor([0.0, 90.0, 200.0, 300.0])[:n],
                               3.0)
    proj = C.perspective_projection(torch.full((n,), math.radians(45.0)), 1.0, 0.1, 100.0)
    return C.mvp_matrix(c2w, proj).to(device)


def bench_gpu(fn: Callable[[], None], warmup: int = 10, rep: int = 50) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def bench_host(fn: Callable[[], None], reps: int = 2) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def workload(v: torch.Tensor, f: torch.Tensor, mvp: torch.Tensor, res: int, backend: str) -> Dict[str, Callable]:
    homo = torch.cat([v, torch.ones_like(v[:, :1])], -1)
    pos = (homo[None] @ mvp.transpose(-1, -2)).contiguous().requires_grad_(True)
    col = (v * 0.5 + 0.5).contiguous().requires_grad_(True)
    g = torch.randn(mvp.shape[0], res, res, 3, device=v.device)

    def rast_only():
        with torch.no_grad():
            R.rasterize(pos, f, (res, res), backend=backend)

    def forward():
        rast, _ = R.rasterize(pos, f, (res, res), backend=backend)
        c, _ = R.interpolate(col, rast, f, backend=backend)
        return R.antialias(c, rast, pos, f, backend=backend)

    def fwd_only():
        with torch.no_grad():
            forward()

    def fwd_bwd():
        out = forward()
        gp, gc = torch.autograd.grad(out, [pos, col], g)
        return gp, gc

    def topology():
        R.antialias_construct_topology_hash(f)

    return {"rasterize": rast_only, "topology": topology, "fwd": fwd_only, "fwd_bwd": fwd_bwd,
            "_pos": pos, "_col": col, "_grad": g}


def host_and_graph(fn: Callable[[], Any], n: int = 20) -> Dict[str, Any]:
    """``issue``: host milliseconds per call of ``fn`` issued ``n`` times without waiting for the GPU (the launch
    and Python cost; the GPU queue absorbs the kernels); ``graph``: the median of replaying ``fn`` captured in one
    CUDA graph (the kernels alone, no launch cost); ``graph_error`` when the capture fails."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    issue = (time.perf_counter() - t0) * 1e3 / n
    torch.cuda.synchronize()
    out: Dict[str, Any] = {"issue": issue}
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        out["graph"] = bench_gpu(graph.replay)
    except Exception as e:  # report it, keep the other figures
        out["graph_error"] = f"{type(e).__name__}: {e}".splitlines()[0]
    return out


def phases(v: torch.Tensor, f: torch.Tensor, mvp: torch.Tensor, res: int, backend: str,
           n: int = 40) -> Dict[str, float]:
    """Host milliseconds of each call of one fwd+bwd (medians over ``n`` iterations, each started on an idle GPU):
    ``rasterize``, ``interpolate``, ``antialias`` (with its topology table), ``backward`` (``autograd.grad``), their
    ``sum``, ``wall`` (to the end of the GPU work), and ``free`` (dropping the outputs and the autograd graph, which
    an op sequence in a loop pays too). Where ``wall`` is close to ``sum`` the host bounds the op sequence; a call
    that waits for the GPU (a host synchronisation) shows up in its phase."""
    w = workload(v, f, mvp, res, backend)  # the same inputs as the timed fwd+bwd
    pos, col, g = w["_pos"], w["_col"], w["_grad"]
    names = ("rasterize", "interpolate", "antialias", "backward", "sum", "wall", "free")
    sync = torch.cuda.synchronize if v.is_cuda else (lambda: None)
    rows: List[List[float]] = []
    for i in range(n + 5):
        sync()
        t = [time.perf_counter()]
        rast, _ = R.rasterize(pos, f, (res, res), backend=backend)
        t.append(time.perf_counter())
        c, _ = R.interpolate(col, rast, f, backend=backend)
        t.append(time.perf_counter())
        out = R.antialias(c, rast, pos, f, backend=backend)
        t.append(time.perf_counter())
        grads = torch.autograd.grad(out, [pos, col], g)
        t.append(time.perf_counter())
        sync()
        t.append(time.perf_counter())
        del rast, c, out, grads  # the last references: the graph and the buffers go here, not in the next call
        t.append(time.perf_counter())
        if i >= 5:  # the first few warm up
            ms = [(b - a) * 1e3 for a, b in zip(t, t[1:])]
            rows.append(ms[:4] + [(t[4] - t[0]) * 1e3, (t[5] - t[0]) * 1e3, ms[5]])
    return {k: statistics.median(r[j] for r in rows) for j, k in enumerate(names)}


def trace(fn: Callable[[], Any], folder: str, name: str, n: int = 5) -> Dict[str, Any]:
    """Profile ``n`` calls of ``fn`` (CPU and CUDA activity) into ``folder/name.json.gz`` and summarise each call:
    ``host`` (ms from its start to the return of the last host call), ``kernels`` (ms of GPU kernel time), ``gpu``
    (ms from its first kernel's start to its last kernel's end), ``n_kernels`` and ``n_ops`` (ATen ops)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    os.makedirs(folder, exist_ok=True)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(n):
            with record_function(f"iter{i}"):
                fn()
            torch.cuda.synchronize()
    path = os.path.join(folder, name + ".json.gz")
    prof.export_chrome_trace(path)
    with gzip.open(path, "rt") as fh:
        ev = json.load(fh)["traceEvents"]
    iters = sorted((e for e in ev if str(e.get("name", "")).startswith("iter") and e.get("ph") == "X"
                    and e.get("cat") == "user_annotation"), key=lambda e: e["ts"])
    kern = [e for e in ev if e.get("cat") == "kernel" and e.get("ph") == "X"]
    ops = [e for e in ev if e.get("cat") == "cpu_op" and e.get("ph") == "X"]
    out = []
    for i, it in enumerate(iters):
        t0, t1 = it["ts"], it["ts"] + it["dur"]
        t2 = iters[i + 1]["ts"] if i + 1 < len(iters) else float("inf")
        ks = [k for k in kern if t0 <= k["ts"] < t2]
        out.append({"host": it["dur"] / 1e3, "kernels": sum(k["dur"] for k in ks) / 1e3,
                    "gpu": (max(k["ts"] + k["dur"] for k in ks) - min(k["ts"] for k in ks)) / 1e3 if ks else 0.0,
                    "n_kernels": len(ks), "n_ops": sum(1 for o in ops if t0 <= o["ts"] < t1)})
    med = {k: statistics.median(o[k] for o in out) for k in ("host", "kernels", "gpu", "n_kernels", "n_ops")}
    return {"median": med, "file": path}


def launch_costs(dev: str, n: int = 300) -> Dict[str, float]:
    """Host microseconds per call, issued ``n`` times without waiting for the GPU: one tiny Triton kernel through
    Triton's dispatcher, through :class:`FastKernel`'s direct launch and through the compiled launcher alone (the
    floor of a Triton launch from Python), ``torch.empty`` and ``torch.zeros`` (an allocation, and one with a fill
    kernel), and a no-op autograd function (forward and a backward through ``sum``)."""
    from threestudio.ops.rasterize import triton_backend as TB
    from threestudio.ops.triton_launch import FastKernel

    from rasterize_host_glue import NoOp  # this script's folder is on sys.path

    attr = torch.zeros(1, 3, 3, device=dev)
    rast = torch.zeros(1, 8, 8, 4, device=dev)
    tri = torch.zeros(1, 3, dtype=torch.int32, device=dev)
    out = torch.empty(1, 8, 8, 3, device=dev)
    args = (attr, rast, tri, out, 64, 64, 3, 3)
    kw = dict(ATTR_BATCHED=False, BLOCK=64, CB=4, num_warps=4)
    fk = FastKernel(TB._interp_fwd_kernel)
    fk[(1,)](*args, **kw)  # compiles, and keeps the compiled launcher
    x = torch.zeros(8, device=dev, requires_grad=True)
    run, function, metadata, tail = next(iter(fk.cache.values())) if fk.cache else (None,) * 4
    stream = torch.cuda.current_stream().cuda_stream
    fns = {"triton_dispatch": lambda: TB._interp_fwd_kernel[(1,)](*args, **kw),
           "triton_direct": lambda: fk[(1,)](*args, **kw),
           "torch_empty": lambda: torch.empty(4096, device=dev),
           "torch_zeros": lambda: torch.zeros(4096, device=dev),
           # the sizes of one 4 x 512^2 render's buffers (the z-buffer, an RGB image): the allocator's large pool
           "torch_empty_8MB": lambda: torch.empty(1 << 20, dtype=torch.int64, device=dev),
           "torch_full_8MB": lambda: torch.full((1 << 20,), -1, dtype=torch.int64, device=dev),
           "autograd_fn_fwd_bwd": lambda: NoOp.apply(x).sum().backward()}
    if run is not None:  # Triton's compiled launcher alone (what a direct launch costs without any Python of ours)
        fns["triton_launcher_only"] = lambda: run(1, 1, 1, stream, function, metadata, None, None, None, *args, *tail)
    static = _static_launch(TB._interp_fwd_kernel[(1,)](*args, **kw), args, stream)
    if callable(static):  # the same compiled kernel through torch's C++ launcher (what inductor uses)
        fns["torch_static_launcher"] = static
    a = torch.zeros(64, device=dev)
    fns["aten_add_"] = lambda: a.add_(1.0)  # one ATen elementwise kernel: the floor of a launch through the dispatcher
    res = {}
    for name, fn in fns.items():
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        res[name] = (time.perf_counter() - t0) * 1e6 / n
        torch.cuda.synchronize()
    res["direct_launches"] = fk.stats["direct"]
    if not callable(static):
        res["torch_static_launcher_error"] = static
    return res


def _static_launch(compiled: Any, args: tuple, stream: int) -> Any:
    """A zero-argument launch of ``compiled`` (a Triton CompiledKernel, grid 1) with ``args`` (its runtime
    arguments, constexprs left out) through ``torch._C._StaticCudaLauncher``, or why it is not available."""
    try:
        from torch._C import _StaticCudaLauncher as SCL  # type: ignore[attr-defined]

        sig = compiled.src.signature
        names = compiled.src.fn.arg_names
        codes = {"i1": "i", "i8": "b", "i16": "h", "i32": "i", "i64": "l", "u1": "I", "u8": "B", "u16": "H",
                 "u32": "I", "u64": "K", "fp16": "f", "bf16": "f", "fp32": "f", "f32": "f", "fp64": "d"}
        tys = ""
        for i, a in enumerate(args):
            t = sig[names[i]] if names[i] in sig else sig[i]
            if t == "constexpr":
                return f"argument {names[i]} was specialised to a constant"
            tys += "O" if t.startswith("*") else codes[t]
        md = compiled.metadata
        extra = tuple(None for n in ("global_scratch_size", "profile_scratch_size") if hasattr(md, n))
        if any(getattr(md, n, 0) > 0 for n in ("global_scratch_size", "profile_scratch_size")):
            return "the kernel needs scratch memory"
        tys += "O" * len(extra)
        full = tuple(args) + extra
        fn, warps, shared = compiled.function, md.num_warps, md.shared

        def launch() -> None:
            SCL._launch_kernel(fn, 1, 1, 1, warps, shared, tys, full, stream)

        launch()
        torch.cuda.synchronize()
        return launch
    except Exception as e:  # any torch/Triton version without it
        return f"{type(e).__name__}: {e}".splitlines()[0]


def table_row(r: Dict[str, Any]) -> str:
    """One row of the summary table; the nvdiffrast columns only from nvdiffrast timed in the same run."""
    ms = r["ms"]
    tr, nv = ms.get("triton", {}), ms.get("nvdiffrast")
    ratio = f"{tr['fwd_bwd'] / nv['fwd_bwd']:.2f}; {tr['rasterize'] / nv['rasterize']:.2f}" if tr and nv else "-"
    ref = f"{nv['fwd_bwd']:.3f} / {nv['rasterize']:.3f}" if nv else "-"
    cpu = ms.get("cpu", {}).get("fwd_bwd")
    sp = f"{cpu / tr['fwd_bwd']:.0f}x" if cpu and tr else "-"
    f_ = lambda d, k: f"{d[k]:.3f}" if d and k in d else "-"  # noqa: E731
    return (f"| {r['triangles']} | {r['coverage']:.2f} | {f_(tr, 'fwd_bwd')} | {f_(tr, 'rasterize')} | "
            f"{f_(tr, 'fwd')} | {f_(tr, 'topology')} | {ref} | {ratio} | {f_(ms.get('torch'), 'fwd_bwd')} | "
            f"{f'{cpu:.0f}' if cpu else '-'} | {sp} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    ap.add_argument("--subdiv", default="5,6,7,8", help="icosphere subdivision levels (5: 20k ... 8: 1.3M triangles)")
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--device", default="cuda", help="cuda (timings) or cpu (a smoke run of the script)")
    ap.add_argument("--backends", default="triton,torch", help="GPU backends to time (nvdiffrast is added if found)")
    ap.add_argument("--cpu-max-subdiv", type=int, default=8, help="time the CPU figure up to this level")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU sanity figure")
    ap.add_argument("--profile", action="store_true", help="print the CUDA time per kernel of the Triton fwd+bwd")
    ap.add_argument("--host", action="store_true",
                    help="also time the Triton fwd+bwd's host side (issuing it without waiting) and a CUDA-graph "
                         "replay of it (where both are far apart from the timed figure, launches dominate), and the "
                         "host cost of one launch of each kind")
    ap.add_argument("--trace", default=None, help="write a Chrome trace (torch profiler, CPU and CUDA) of 5 fwd+bwd "
                    "iterations per size and backend into this folder, and print each iteration's host and GPU time")
    ap.add_argument("--variants", default="", help="extra Triton launch configs to compare, e.g. "
                    "'small_tile=4;large_tile=16,large_block=8;fast_launch=0' (';' separates variants)")
    args = ap.parse_args()
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this benchmark times CUDA kernels and needs a GPU (use --device cpu for a smoke run)")
    levels = [int(s) for s in args.subdiv.split(",") if s]
    backends = [b for b in args.backends.split(",") if b]
    nvdiffrast_missing = ""
    if dev == "cuda":
        try:
            import importlib

            importlib.import_module("nvdiffrast.torch")
            if "nvdiffrast" not in backends:
                backends.append("nvdiffrast")
        except Exception as e:  # ImportError, or its JIT build failing
            nvdiffrast_missing = f"{type(e).__name__}: {e}".splitlines()[0]
            backends = [b for b in backends if b != "nvdiffrast"]
    else:
        backends = ["torch"]
    timer = bench_gpu if dev == "cuda" else bench_host
    variants: List[Dict[str, int]] = []
    for spec in [s for s in args.variants.split(";") if s.strip()]:
        variants.append({k.strip(): int(v) for k, v in (kv.split("=") for kv in spec.split(","))})
    from threestudio.ops.rasterize import triton_backend as TB  # noqa: E402

    rows = []
    results = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
               "res": args.res, "batch": args.batch, "rows": rows, "nvdiffrast_missing": nvdiffrast_missing or None,
               "triton_config": dataclasses.asdict(TB.DEFAULT_CONFIG)}
    mvp = cameras(args.batch, args.res, dev)
    if args.host and dev == "cuda":
        results["launch_us"] = launch_costs(dev)
        print("host microseconds per call (issued without waiting):",
              {k: round(v, 1) for k, v in results["launch_us"].items()}, flush=True)
    for lvl in levels:
        v, f = icosphere(lvl, dev)
        row = {"subdiv": lvl, "triangles": int(f.shape[0]), "ms": {}}
        with torch.no_grad():
            homo = torch.cat([v, torch.ones_like(v[:, :1])], -1)
            rast, _ = R.rasterize(homo[None] @ mvp.transpose(-1, -2), f, (args.res, args.res))
            row["coverage"] = float((rast[..., 3] > 0).float().mean())
        for be in backends:
            w = workload(v, f, mvp, args.res, be)
            row["ms"][be] = {k: timer(w[k]) for k in ("rasterize", "topology", "fwd", "fwd_bwd")}
            print(f"subdiv {lvl} ({f.shape[0]} tris) {be}: {row['ms'][be]}", flush=True)
        if args.trace and dev == "cuda":
            for be in backends:
                row.setdefault("trace", {})[be] = trace(workload(v, f, mvp, args.res, be)["fwd_bwd"], args.trace,
                                                        f"{be}_{f.shape[0]}")
                print(f"subdiv {lvl} {be} trace: {row['trace'][be]}", flush=True)
        if args.profile and dev == "cuda":
            from torch.profiler import ProfilerActivity, profile

            w = workload(v, f, mvp, args.res, "triton")
            w["fwd_bwd"]()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    w["fwd_bwd"]()
                torch.cuda.synchronize()
            print(f"profile subdiv {lvl} (5 iterations):")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
        if args.host and dev == "cuda":
            for be in backends:  # host time per call of each backend's fwd+bwd
                row.setdefault("phases", {})[be] = phases(v, f, mvp, args.res, be)
                print(f"subdiv {lvl} {be} host ms per call: "
                      f"{ {k: round(x, 3) for k, x in row['phases'][be].items()} }", flush=True)
            row["ms"]["triton_host"] = host_and_graph(workload(v, f, mvp, args.res, "triton")["fwd_bwd"])
            print(f"subdiv {lvl} triton host/graph: {row['ms']['triton_host']}", flush=True)
            if lvl == levels[0]:  # where the host time of one fwd+bwd goes (Python's profiler, 50 calls)
                import cProfile
                import io
                import pstats

                fb = workload(v, f, mvp, args.res, "triton")["fwd_bwd"]
                fb()
                prof_py = cProfile.Profile()
                prof_py.enable()
                for _ in range(50):
                    fb()
                prof_py.disable()
                torch.cuda.synchronize()
                buf = io.StringIO()
                pstats.Stats(prof_py, stream=buf).sort_stats("tottime").print_stats(22)
                print(f"host profile subdiv {lvl} (50 fwd+bwd calls):\n" + buf.getvalue(), flush=True)
            # the same with the other launch path (threestudio.ops.triton_launch: direct or through Triton's dispatcher)
            other = not TB.DEFAULT_CONFIG.fast_launch
            TB.set_config(dataclasses.replace(TB.DEFAULT_CONFIG, fast_launch=other))
            w = workload(v, f, mvp, args.res, "triton")
            name = "triton_fast_launch_host" if other else "triton_dispatch_host"
            row["ms"][name] = {"issue": host_and_graph(w["fwd_bwd"])["issue"], "fwd_bwd": timer(w["fwd_bwd"])}
            TB.set_config(TB.DEFAULT_CONFIG)
            print(f"subdiv {lvl} {name}: {row['ms'][name]}", flush=True)
        for i, var in enumerate(variants):
            TB.set_config(dataclasses.replace(TB.DEFAULT_CONFIG, **var))
            w = workload(v, f, mvp, args.res, "triton")
            name = "triton[" + ",".join(f"{k}={x}" for k, x in var.items()) + "]"
            row["ms"][name] = {k: timer(w[k]) for k in ("rasterize", "fwd_bwd")}
            if args.host and dev == "cuda":  # the kernels alone (a CUDA-graph replay) and the host's issue time
                hg = host_and_graph(w["fwd_bwd"])
                row["ms"][name].update({k: hg[k] for k in ("issue", "graph") if k in hg})
            print(f"subdiv {lvl} {name}: {row['ms'][name]}", flush=True)
            TB.set_config(TB.DEFAULT_CONFIG)
        if dev == "cuda" and not args.no_cpu and lvl <= args.cpu_max_subdiv:
            torch.set_num_threads(os.cpu_count() or 1)
            w = workload(v.cpu(), f.cpu(), mvp.cpu(), args.res, "torch")
            row["ms"]["cpu"] = {"fwd_bwd": bench_host(w["fwd_bwd"], reps=1)}
            print(f"subdiv {lvl} cpu: {row['ms']['cpu']}", flush=True)
        if dev == "cuda":
            row["peak_mem_MiB"] = torch.cuda.max_memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
        rows.append(row)
        del v, f

    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)

    print(f"\ndevice: {results['device']}, torch {results['torch']}, {args.batch} views at {args.res}^2, "
          f"rasterize + interpolate (3 ch) + antialias, forward + backward")
    if dev == "cuda":
        print("nvdiffrast: timed in this process" if not nvdiffrast_missing else
              f"nvdiffrast: not importable here ({nvdiffrast_missing}), so no ours / nvdiffrast ratio")
    print("\n| triangles | coverage | ours (Triton) fwd+bwd ms | rasterize ms | fwd ms | topology ms | nvdiffrast, "
          "same process (fwd+bwd / rasterize) ms | ours / nvdiffrast (fwd+bwd; rasterize) | torch (GPU) fwd+bwd ms | "
          "CPU fwd+bwd ms | GPU speed-up over CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(table_row(r))
    extra = sorted({k for r in rows for k in r["ms"] if k.startswith("triton[") or k == "nvdiffrast"})
    if extra:
        print("\n| variant | " + " | ".join(str(r["triangles"]) for r in rows) + " |")
        print("|---|" + "---|" * len(rows))
        for k in extra:
            cells = [f"{r['ms'][k]['fwd_bwd']:.3f} / {r['ms'][k]['rasterize']:.3f}" if k in r["ms"] else "-"
                     for r in rows]
            print(f"| {k} (fwd+bwd / rasterize ms) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
