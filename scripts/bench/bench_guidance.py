#!/usr/bin/env python
"""Stable Diffusion guidance on a GPU: UNet/VAE floors, compile times (cold and warm cache), recompiles, the
dreamfusion-sd and asd-sd-nerf training-step times and peak memory.

No download: the UNet and VAE of SD-2.1-base are built at full size with random weights from their real configs
(``threestudio.utils.weights.save_random_stable_diffusion(preset="sd21-base")``, a small text encoder of width 1024)
and saved to a folder that every stage loads through the same ``from_pretrained`` path as a real run.

Stages (one process, plus a second process for the warm-cache compile):

1. eager fp16 (diffusers, SDPA): UNet forward at batch 2 (CFG) and 3 (ASD), VAE encode forward+backward at 512^2;
2. compiled SDS guidance (``torch.compile(mode="reduce-overhead")``, CUDA graphs): first-call (compile) times with an
   empty inductor cache, then the same timings (the floor = compiled UNet CFG forward + VAE encode fwd+bwd);
3. the ``dreamfusion-sd`` recipe through ``launch.py``'s own code path (Lightning loop, loggers, checkpointing) at
   64^2 render, eager and compiled guidance: wall time per step over a window after warm-up, peak GPU memory, Dynamo
   graph count before/after the window (recompiles);
4. a second process with the same inductor cache: the compile time a second run pays;
5. ASD guidance compiled (UNet at 3 evaluations) and the ``asd-sd-nerf`` recipe (Perp-Neg off, i.e. the 3-evaluation
   configuration the floor refers to; ``--asd-perp-neg`` keeps the recipe's 5).

    python scripts/bench/bench_guidance.py --json out.json

A markdown table is printed last. Timings are medians of CUDA-event timings after warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import torch  # noqa: E402

T0 = time.time()
RESULTS: Dict[str, Any] = {}


def log(msg: str) -> None:
    print(f"[bench +{time.time() - T0:6.1f}s] {msg}", flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], Any], iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        if torch.cuda.is_available():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def first_call_s(fn: Callable[[], Any]) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def save(args: argparse.Namespace) -> None:
    if args.json:
        with open(args.json, "w") as f:
            json.dump(RESULTS, f, indent=2, default=str)


def graphs() -> int:
    import torch._dynamo.utils as du

    return int(du.counters["stats"]["unique_graphs"])


def cudagraph_counters() -> Dict[str, int]:
    import torch._dynamo.utils as du

    return {k: int(v) for k, v in du.counters["inductor"].items() if "cudagraph" in k}


# ----------------------------------------------------------------------------------------------- building
def build_model(folder: str) -> str:
    if os.path.isfile(os.path.join(folder, "unet", "config.json")):
        return folder
    from threestudio.utils.weights import save_random_stable_diffusion

    t = time.time()
    save_random_stable_diffusion(folder, preset="sd21-base", dtype=torch.float16,
                                 device="cuda" if torch.cuda.is_available() else None)
    log(f"random SD-2.1-base UNet+VAE written to {folder} in {time.time() - t:.1f}s")
    return folder


def prompt_utils(model: str):
    import threestudio

    pp = threestudio.find("stable-diffusion-prompt-processor")(
        {"prompt": "a hamburger", "pretrained_model_name_or_path": model})
    return pp, pp().to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


NO_COMPILE = False


def guidance(name: str, model: str, compile_: bool, **cfg: Any):
    import threestudio

    compile_ = compile_ and not NO_COMPILE
    return threestudio.find(name)({"pretrained_model_name_or_path": model, "compile": compile_, **cfg})


def unet_inputs(g, pu, rows: int):
    dev = g.device
    x = torch.randn(rows, 4, 64, 64, device=dev)
    t = torch.randint(20, 980, (rows,), device=dev)
    emb = pu.text_embeddings.expand(rows, -1, -1).contiguous()
    return x, t, emb


def vae_step(g, img, grad):
    def run():
        img.grad = None
        lat = g.encode_images(img)
        lat.backward(grad)
    return run


def micro(g, pu, rows_list: List[int], iters: int, warmup: int, tag: str, first: bool) -> Dict[str, float]:
    """UNet forward at each batch and VAE encode fwd+bwd at 512^2; with ``first``, the first-call times too."""
    out: Dict[str, float] = {}
    dev = g.device
    img = torch.rand(1, 3, 512, 512, device=dev, requires_grad=True)
    grad = torch.randn(1, 4, 64, 64, device=dev)
    for rows in rows_list:
        x, t, emb = unet_inputs(g, pu, rows)
        fn = lambda: g.forward_unet(x, t, emb)  # noqa: E731
        if first:
            out[f"{tag}_unet_b{rows}_first_call_s"] = first_call_s(fn)
            log(f"{tag}: UNet batch {rows} first call {out[f'{tag}_unet_b{rows}_first_call_s']:.1f}s")
        out[f"{tag}_unet_b{rows}_ms"] = median_ms(fn, iters, warmup)
        log(f"{tag}: UNet batch {rows}: {out[f'{tag}_unet_b{rows}_ms']:.2f} ms")
    fn = vae_step(g, img, grad)
    if first:
        out[f"{tag}_vae_first_call_s"] = first_call_s(fn)
        log(f"{tag}: VAE encode fwd+bwd first call {out[f'{tag}_vae_first_call_s']:.1f}s")
    out[f"{tag}_vae_fwd_bwd_ms"] = median_ms(fn, iters, warmup)
    log(f"{tag}: VAE encode fwd+bwd 512^2: {out[f'{tag}_vae_fwd_bwd_ms']:.2f} ms")
    return out


def compare(g_e, g_c, pu) -> float:
    """The same SDS step (latents, t, noise) through the eager and the compiled guidance: relative gradient error."""
    dev = g_c.device
    grads = []
    lat = torch.randn(1, 64, 64, 4, device=dev)
    t, noise = torch.tensor([500], device=dev), torch.randn(1, 4, 64, 64, device=dev)
    cams = [torch.tensor([10.0], device=dev), torch.tensor([30.0], device=dev), torch.tensor([2.0], device=dev)]
    for g in (g_e, g_c):
        x = lat.clone().requires_grad_(True)
        out = g(x, pu, *cams, rgb_as_latents=True, t=t, noise=noise)
        grads.append(torch.autograd.grad(out["loss_sds"], x)[0])
    return float((grads[1] - grads[0]).norm() / grads[0].norm().clamp_min(1e-12))


# ----------------------------------------------------------------------------------------------- recipe runs
def run_recipe(recipe: str, model: str, pp, g, warmup: int, steps: int, extra: List[str],
               profile_to: Optional[str] = None, gc_freeze: bool = False) -> Dict[str, Any]:
    """Train ``recipe`` through launch.py's code path with the given (already built) prompt processor and guidance;
    time the steps [warmup, warmup + steps): their mean, each step-to-step interval, and the Python garbage
    collector's pauses in the window (``gc_pauses``: batch index, generation, ms). ``gc_freeze``: ``gc.freeze()``
    just before the window (an experiment). With ``profile_to`` (a file prefix), 5 more steps run under
    torch.profiler and 3 under CUDA's sync debug mode, as :func:`breakdown` does for the plain loop."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback

    from threestudio.launcher import main
    from threestudio.systems.dreamfusion import DreamFusion

    res: Dict[str, Any] = {}

    class Timer(Callback):
        def __init__(self) -> None:
            self.starts: List[float] = []
            self.gc_pauses: List[List[float]] = []
            self.batch_idx = -1
            self.trace: Optional[SyncTracing] = None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):  # noqa: ANN001
            if profile_to and batch_idx == warmup + steps:
                self.prof = Profiling(profile_to)
                self.prof.__enter__()
            if profile_to and batch_idx == warmup + steps + PROFILE_STEPS:
                self.prof.__exit__(None, None, None)
                res.update(self.prof.stats(PROFILE_STEPS))
                self.trace = SyncTracing(profile_to + ".syncs.txt")
                self.trace.__enter__()
            if profile_to and batch_idx == warmup + steps + PROFILE_STEPS + TRACE_STEPS:
                self.trace.__exit__(None, None, None)
                res["host_syncs_per_step"] = self.trace.per_step(TRACE_STEPS)
                self.trace = None
            if self.trace is not None:
                self.trace.step = batch_idx  # (callbacks before this one count toward the batch before)
            if batch_idx == warmup:
                if gc_freeze:
                    gc.collect()
                    gc.freeze()
                self.batch_idx = batch_idx
                gc.callbacks.append(self.on_gc)
                sync()
                torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
                res["graphs_before"] = graphs()
                res["cudagraph_counters_before"] = cudagraph_counters()
                self.t0 = time.perf_counter()
            self.starts.append(time.perf_counter())
            self.batch_idx = batch_idx

        def on_gc(self, phase: str, info: Dict[str, int]) -> None:
            if phase == "start":
                self.gc_t0 = time.perf_counter()
            else:
                self.gc_pauses.append([self.batch_idx, info["generation"],
                                       round((time.perf_counter() - self.gc_t0) * 1e3, 3)])

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):  # noqa: ANN001
            if batch_idx == warmup + steps - 1:
                sync()
                res["step_ms"] = (time.perf_counter() - self.t0) * 1e3 / steps
                res["graphs_after"] = graphs()
                res["cudagraph_counters_after"] = cudagraph_counters()
                iv = [(b - a) * 1e3 for a, b in zip(self.starts[warmup:], self.starts[warmup + 1:])]
                res["step_interval_median_ms"] = statistics.median(iv) if iv else None
                res["step_interval_max_ms"] = max(iv) if iv else None
                res["step_intervals_ms"] = [round(x, 2) for x in iv]  # iv[k]: batch warmup + k to the next
                if self.on_gc in gc.callbacks:
                    gc.callbacks.remove(self.on_gc)
                res["gc_pauses"] = self.gc_pauses
                res["gc_pause_ms_total"] = sum(p[2] for p in self.gc_pauses)
                if gc_freeze:
                    gc.unfreeze()
                if torch.cuda.is_available():
                    res["peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
                    res["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
                # now, not only in the result: a run stopped during the profiled steps still reports its window
                log(f"{recipe}: timed window of {steps} steps: mean {res['step_ms']:.2f} ms, median "
                    f"{res['step_interval_median_ms'] or float('nan'):.2f} ms, peak "
                    f"{res.get('peak_allocated_gb', float('nan')):.2f} GB allocated")

    timer = Timer()
    orig_init = pl.Trainer.__init__
    orig_build = DreamFusion.prepare_objective

    def init(self, *a: Any, callbacks: Optional[list] = None, **k: Any) -> None:
        orig_init(self, *a, callbacks=list(callbacks or []) + [timer], **k)

    def build(self) -> None:  # the bench's prebuilt modules instead of building new ones
        obj = self.objective
        obj.prompt_processor, obj.prompt_utils, obj.guidance = pp, pp().to(self.device), g
        obj.guidance.do_update_step(self.true_current_epoch, self.true_global_step)
        if torch.cuda.is_available():  # whole-run peak: from here (weights resident) to the end of the window
            torch.cuda.reset_peak_memory_stats()

    pl.Trainer.__init__ = init
    DreamFusion.prepare_objective = build
    out_dir = tempfile.mkdtemp(prefix="bench-")
    try:
        rc = main(["--config", os.path.join(REPO, "configs", f"{recipe}.yaml"), "--train",
                   "system.prompt_processor.prompt=a hamburger", f"exp_root_dir={out_dir}",
                   f"system.prompt_processor.pretrained_model_name_or_path={model}",
                   f"trainer.max_steps={warmup + steps + 1 + (PROFILE_STEPS + TRACE_STEPS if profile_to else 0)}",
                   "trainer.val_check_interval=100000",
                   "trainer.enable_progress_bar=false", "data.n_test_views=1", "data.eval_height=64",
                   "data.eval_width=64", *extra])
    finally:
        pl.Trainer.__init__ = orig_init
        DreamFusion.prepare_objective = orig_build
        os.environ.pop("THREESTUDIO_TRIAL_TIMESTAMP", None)
        if timer.on_gc in gc.callbacks:  # a run that stopped inside the window
            gc.callbacks.remove(timer.on_gc)
            gc.unfreeze()
    res["rc"] = rc
    return res


def breakdown(recipe: str, model: str, pp, g, overrides: List[str], warmup: int, steps: int,
              profile_to: Optional[str] = None) -> Dict[str, float]:
    """The recipe's training step as a plain loop (no Lightning): its total, and each phase timed alone (a sync
    after each): data, render forward, guidance forward (VAE encode + UNet + loss), backward (guidance + render),
    optimizer step. With ``profile_to`` (a file prefix), 5 more steps run under torch.profiler: the operator tables
    (by self CUDA time and by self CPU time), the CUDA kernel launches and host synchronisations per step."""
    import threestudio
    from threestudio.utils.config import load_config

    cfg = load_config(os.path.join(REPO, "configs", f"{recipe}.yaml"), cli_args=[
        "system.prompt_processor.prompt=a hamburger", f"system.prompt_processor.pretrained_model_name_or_path={model}",
        *overrides])
    dev = g.device
    dm = threestudio.find(cfg.data_type)(cfg.data)
    system = threestudio.find(cfg.system_type)(cfg.system).to(dev)
    system.train()
    system.prompt_processor, system.prompt_utils, system.guidance = pp, pp().to(dev), g
    opt = system.configure_optimizers()["optimizer"]
    phases = ("data", "render_fwd", "guidance_fwd", "backward", "optimizer")

    def step(i: int, timed: Optional[Dict[str, List[float]]], synced: bool = True) -> None:
        marks = [time.perf_counter()]

        def mark() -> None:
            if timed is not None:
                if synced:
                    sync()
                marks.append(time.perf_counter())

        system.do_update_step(0, i)
        batch = dm.draw_train_batch(dev)
        mark()
        out = system(batch)
        mark()
        go = system.guidance_terms(out, batch)
        terms = {k[5:]: v for k, v in go.items() if k.startswith("loss_")}
        names = set(terms)
        terms.update(system.regularizers(out))
        loss = sum(system._lambda(k, 1.0 if k in names else 0.0) * v for k, v in terms.items())
        mark()
        loss.backward()
        mark()
        opt.step()
        opt.zero_grad(set_to_none=True)
        mark()
        if timed is not None:
            for name, a, b in zip(phases, marks, marks[1:]):
                timed[name].append((b - a) * 1e3)

    for i in range(warmup):
        step(i, None)
    sync()
    t = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i, None)
    sync()
    res = {"loop_step_ms": (time.perf_counter() - t) * 1e3 / steps}
    timed: Dict[str, List[float]] = {p: [] for p in phases}
    for i in range(warmup + steps, warmup + 2 * steps):
        step(i, timed)
    for name in phases:
        res[f"{name}_ms"] = statistics.median(timed[name])
    # the same phases without the syncs: host time to issue each (plus any wait inside it on a host sync)
    timed = {p: [] for p in phases}
    for i in range(warmup + 2 * steps, warmup + 3 * steps):
        step(i, timed, synced=False)
    sync()
    for name in phases:
        res[f"host_{name}_ms"] = statistics.median(timed[name])
    if profile_to:
        first = warmup + 3 * steps
        res.update(profile_steps(lambda i: step(i, None), first, profile_to))
        res["host_syncs_per_step"] = trace_syncs(lambda i: step(i, None), first + PROFILE_STEPS,
                                                 profile_to + ".syncs.txt")
    del system, opt
    return res


PROFILE_STEPS, TRACE_STEPS = 5, 3


class Profiling:
    """torch.profiler over a block of steps; ``stats(n)`` writes ``<prefix>.cuda.txt`` / ``<prefix>.cpu.txt`` (top
    operators) and returns kernel launches, host synchronisations and GPU busy time per step."""

    def __init__(self, prefix: str) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.prefix = prefix
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.prof = profile(activities=acts)

    def __enter__(self) -> "Profiling":
        sync()
        self.prof.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        sync()
        self.prof.__exit__(*exc)

    def stats(self, n: int) -> Dict[str, float]:
        avg = self.prof.key_averages()
        sort_gpu = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        with open(self.prefix + ".cuda.txt", "w") as f:
            f.write(avg.table(sort_by=sort_gpu, row_limit=60))
        with open(self.prefix + ".cpu.txt", "w") as f:
            f.write(avg.table(sort_by="self_cpu_time_total", row_limit=80))
        launches = sum(e.count for e in avg if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                                           "cuLaunchKernelEx", "cudaGraphLaunch"))
        syncs = sum(e.count for e in avg if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                        "cudaMemcpyAsync", "aten::_local_scalar_dense",
                                                        "aten::item"))
        gpu_us = sum(getattr(e, "self_device_time_total", 0.0) or 0.0 for e in avg if e.device_type.name == "CUDA")
        cpu_us = sum(e.self_cpu_time_total for e in avg if e.device_type.name == "CPU")
        return {"profile_launches_per_step": launches / n, "profile_syncs_per_step": syncs / n,
                "profile_gpu_busy_ms_per_step": gpu_us / 1e3 / n, "profile_cpu_ms_per_step": cpu_us / 1e3 / n}


def profile_steps(step: Callable[[int], None], first: int, prefix: str, n: int = PROFILE_STEPS) -> Dict[str, float]:
    with Profiling(prefix) as p:
        for i in range(first, first + n):
            step(i)
    return p.stats(n)


class SyncTracing:
    """CUDA's sync debug mode over a block of steps: each synchronising call site (the Python stack) and how often
    it ran per step go to ``path``."""

    def __init__(self, path: str) -> None:
        import collections

        self.path = path
        self.sites: "collections.Counter[str]" = collections.Counter()
        self.step: Optional[int] = None  # set by the caller: the batch each site is seen in
        self.steps_of: Dict[str, set] = collections.defaultdict(set)

    def _show(self, message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        import traceback

        if "synchroniz" in str(message):
            frames = [f for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename]
            site = " <- ".join(
                f"{os.path.relpath(f.filename, REPO) if f.filename.startswith(REPO) else f.filename}:{f.lineno} "
                f"{f.name}" for f in frames[-8:][::-1])
            self.sites[site] += 1
            if self.step is not None:
                self.steps_of[site].add(self.step)
        else:
            self._orig(message, category, filename, lineno, file, line)

    def __enter__(self) -> "SyncTracing":
        import warnings

        sync()
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("always")
        self._orig = warnings.showwarning
        warnings.showwarning = self._show
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc: Any) -> None:
        import warnings

        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = self._orig
        self._catch.__exit__(*exc)

    def per_step(self, n: int) -> float:
        with open(self.path, "w") as f:
            for site, c in self.sites.most_common():
                steps = sorted(self.steps_of.get(site, ()))
                f.write(f"{c / n:5.1f}/step  {site}" + (f"  [batches {steps}]" if steps else "") + "\n")
        return sum(self.sites.values()) / n


def trace_syncs(step: Callable[[int], None], first: int, path: str, n: int = TRACE_STEPS) -> float:
    """Run ``n`` steps with CUDA's sync debug mode on; write each synchronising call site and how often it ran per
    step to ``path``; return the synchronisations per step."""
    if not torch.cuda.is_available():
        return 0.0
    with SyncTracing(path) as t:
        for i in range(first, first + n):
            step(i)
    return t.per_step(n)


# ----------------------------------------------------------------------------------------------- second run
def second_run(args: argparse.Namespace) -> None:
    """A fresh process, same inductor cache: what compiling costs a second run."""
    t = time.perf_counter()
    pp, pu = prompt_utils(args.model)
    g = guidance("stable-diffusion-guidance", args.model, True)
    load_s = time.perf_counter() - t
    out = micro(g, pu, [2], iters=5, warmup=2, tag="warm", first=True)
    out["warm_load_s"] = load_s
    print("SECOND_RUN_JSON " + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.path.join(tempfile.gettempdir(), "sd21-base-random"),
                   help="a diffusers SD folder (built with random weights if absent)")
    p.add_argument("--cache", default=None, help="THREESTUDIO_CACHE for this run (default: a fresh temp folder)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup-iters", type=int, default=5)
    p.add_argument("--steps", type=int, default=40, help="timed training steps per recipe run")
    p.add_argument("--warmup-steps", type=int, default=20,
                   help="untimed steps first (past the first occupancy-grid update at step 16 and its kernel JITs)")
    p.add_argument("--budget", type=float, default=420.0, help="skip stages that would start after this many s")
    p.add_argument("--asd-perp-neg", action="store_true", help="asd-sd-nerf with Perp-Neg (5 evaluations)")
    p.add_argument("--skip-eager-steps", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="smoke test: every stage eager (e.g. on a CPU)")
    p.add_argument("--second-run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None)
    p.add_argument("--profile-only", metavar="DIR", default=None,
                   help="only the floors, the plain-loop breakdown of dreamfusion-sd with compiled guidance, and "
                        "both recipes through launch.py with the sample prefetch and the guard skip each on and off, "
                        "with profiler tables and a sync trace written to DIR (where the step time goes)")
    p.add_argument("--skip-breakdown", action="store_true", help="--profile-only without the plain-loop breakdown")
    p.add_argument("--defaults-only", action="store_true",
                   help="--profile-only: each recipe through launch.py as shipped only (prefetch and guard skip on)")
    p.add_argument("--recipe", choices=("dreamfusion-sd", "asd-sd-nerf"), default=None,
                   help="--profile-only: this recipe only (one process per recipe: later runs in a process measure "
                        "slower)")
    p.add_argument("--trace-steps", type=int, default=3,
                   help="--profile-only: steps of the sync trace (after the profiled ones); >= 10 to cover a logging "
                        "step")
    p.add_argument("overrides", nargs="*", help="extra recipe overrides (key=value)")
    args = p.parse_args()

    global NO_COMPILE, TRACE_STEPS
    NO_COMPILE = args.no_compile
    TRACE_STEPS = args.trace_steps
    if args.cache is None:
        args.cache = tempfile.mkdtemp(prefix="ts-cache-")
    os.environ["THREESTUDIO_CACHE"] = args.cache
    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    from threestudio.utils.log import setup_logging

    setup_logging()
    if args.second_run:
        second_run(args)
        return

    RESULTS["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    RESULTS["torch"] = torch.__version__
    import diffusers

    RESULTS["diffusers"] = diffusers.__version__
    log(f"device {RESULTS['device']}, torch {torch.__version__}, diffusers {diffusers.__version__}")
    if torch.cuda.is_available() and not args.second_run:  # nerfacc compiles its CUDA code on first use (~70 s):
        subprocess.Popen([sys.executable, "-c", "from nerfacc.cuda._backend import _C"])  # meanwhile, in the background
    build_model(args.model)
    pp, pu = prompt_utils(args.model)

    def left() -> float:
        return args.budget - (time.time() - T0)

    if args.profile_only:
        profile_only(args, pp, pu)
        return

    # 1. eager, then compiled SDS guidance (cold cache); both stay loaded for the comparison
    g_e = guidance("stable-diffusion-guidance", args.model, False)
    RESULTS.update(micro(g_e, pu, [2, 3, 5], args.iters, args.warmup_iters, "eager", first=False))
    save(args)
    g = guidance("stable-diffusion-guidance", args.model, True)
    RESULTS.update(micro(g, pu, [2], args.iters, args.warmup_iters, "compiled", first=True))
    RESULTS["compiled_vs_eager_grad_rel_err"] = compare(g_e, g, pu)
    log(f"compiled vs eager SDS gradient: relative error {RESULTS['compiled_vs_eager_grad_rel_err']:.2e}")
    save(args)

    # 2. dreamfusion-sd steps, eager then compiled guidance
    if not args.skip_eager_steps:
        r = run_recipe("dreamfusion-sd", args.model, pp, g_e, args.warmup_steps, args.steps, args.overrides)
        RESULTS["dreamfusion_eager"] = r
        log(f"dreamfusion-sd eager: {r.get('step_ms', float('nan')):.2f} ms/step")
        save(args)
    del g_e
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    r = run_recipe("dreamfusion-sd", args.model, pp, g, args.warmup_steps, args.steps, args.overrides)
    RESULTS["dreamfusion_compiled"] = r
    log(f"dreamfusion-sd compiled: {r.get('step_ms', float('nan')):.2f} ms/step, peak "
        f"{r.get('peak_allocated_gb', float('nan')):.2f} GB, graphs {r.get('graphs_before')}->{r.get('graphs_after')}")
    save(args)
    if left() > 150:  # the same with finite-difference normals (no double backward through the hash grid)
        r = run_recipe("dreamfusion-sd", args.model, pp, g, args.warmup_steps, args.steps,
                       ["system.geometry.normal_type=finite_difference", *args.overrides])
        RESULTS["dreamfusion_compiled_fd_normals"] = r
        log(f"dreamfusion-sd compiled, finite-difference normals: {r.get('step_ms', float('nan')):.2f} ms/step")
        save(args)
    if left() > 140:
        for key, extra in (("analytic", []),):
            b = breakdown("dreamfusion-sd", args.model, pp, g, extra + args.overrides, args.warmup_steps, args.steps)
            RESULTS[f"dreamfusion_breakdown_{key}"] = b
            log(f"dreamfusion-sd plain loop ({key} normals): " + ", ".join(f"{k} {v:.2f}" for k, v in b.items()))
        save(args)
    del g
    torch.cuda.empty_cache() if torch.cuda.is_available() else None

    # 3. second run: a new process with the same inductor cache
    if left() > 60:
        t = time.time()
        cmd = [sys.executable, os.path.abspath(__file__), "--second-run", "--model", args.model, "--cache", args.cache]
        proc = subprocess.run(cmd + (["--no-compile"] if args.no_compile else []), capture_output=True, text=True,
                              timeout=max(30, left()))
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("SECOND_RUN_JSON ")]
        if line:
            RESULTS.update(json.loads(line[-1][len("SECOND_RUN_JSON "):]))
        else:
            RESULTS["second_run_error"] = (proc.stdout + proc.stderr)[-2000:]
        RESULTS["second_run_process_s"] = time.time() - t
        log(f"second run process: {RESULTS['second_run_process_s']:.1f}s")
        save(args)

    # 4. ASD compiled
    if left() > 90:
        asd_extra = [] if args.asd_perp_neg else ["system.prompt_processor.use_perp_neg=false"]
        rows = 5 if args.asd_perp_neg else 3
        g = guidance("stable-diffusion-asd-guidance", args.model, True)
        RESULTS.update(micro(g, pu, [rows], args.iters, args.warmup_iters, "asd_compiled", first=True))
        save(args)
        pp_asd = pp
        if args.asd_perp_neg:
            import threestudio

            pp_asd = threestudio.find("stable-diffusion-prompt-processor")(
                {"prompt": "a hamburger", "pretrained_model_name_or_path": args.model, "use_perp_neg": True,
                 "front_threshold": 30.0, "back_threshold": 30.0})
        r = run_recipe("asd-sd-nerf", args.model, pp_asd, g, args.warmup_steps, args.steps, asd_extra + args.overrides)
        RESULTS["asd_compiled"] = r
        RESULTS["asd_rows"] = rows
        log(f"asd-sd-nerf compiled: {r.get('step_ms', float('nan')):.2f} ms/step")
        save(args)
        if left() > 20:
            b = breakdown("asd-sd-nerf", args.model, pp_asd, g, asd_extra + args.overrides, args.warmup_steps,
                          args.steps)
            RESULTS["asd_breakdown"] = b
            log("asd-sd-nerf plain loop: " + ", ".join(f"{k} {v:.2f}" for k, v in b.items()))
            save(args)
    report(args)


def profile_only(args: argparse.Namespace, pp, pu) -> None:
    """Floors, then each recipe's plain loop phase by phase and under the profiler (see ``--profile-only``)."""
    os.makedirs(args.profile_only, exist_ok=True)
    if args.recipe != "asd-sd-nerf":
        profile_dreamfusion(args, pp, pu)
    if args.recipe != "dreamfusion-sd":
        profile_asd(args, pp, pu)


def profile_dreamfusion(args: argparse.Namespace, pp, pu) -> None:
    g = guidance("stable-diffusion-guidance", args.model, not args.no_compile)
    RESULTS.update(micro(g, pu, [2], args.iters, args.warmup_iters, "compiled", first=True))
    save(args)
    for key, extra in (() if args.skip_breakdown else (("analytic", []),)):
        b = breakdown("dreamfusion-sd", args.model, pp, g, extra + args.overrides, args.warmup_steps, args.steps,
                      profile_to=os.path.join(args.profile_only, f"dreamfusion-{key}"))
        RESULTS[f"dreamfusion_breakdown_{key}"] = b
        log(f"dreamfusion-sd plain loop ({key} normals): " + ", ".join(f"{k} {v:.2f}" for k, v in b.items()))
        save(args)
    # the defaults (prefetch, skipped guards) and each turned off; the names say what is on
    no_prefetch, prefetch = ["system.renderer.prefetch_samples=false"], ["system.renderer.prefetch_samples=true"]
    runs = (("", no_prefetch, False), ("_prefetch", prefetch, False),
            ("_skip_guards", no_prefetch, True), ("_prefetch_skip_guards", prefetch, True))
    for tag, extra, skip in runs[-1:] if args.defaults_only else runs:
        with skipping_guards(g, skip):
            first = tag == ("_prefetch_skip_guards" if args.defaults_only else "")
            r = run_recipe("dreamfusion-sd", args.model, pp, g, args.warmup_steps, args.steps, extra + args.overrides,
                           profile_to=os.path.join(args.profile_only, "dreamfusion-lightning") if first else None)
        RESULTS[f"dreamfusion_compiled_lightning{tag}"] = r
        log(f"dreamfusion-sd through launch.py (compiled guidance{tag.replace('_', ' ')}): {r}")
        save(args)


def profile_asd(args: argparse.Namespace, pp, pu) -> None:
    no_prefetch, prefetch = ["system.renderer.prefetch_samples=false"], ["system.renderer.prefetch_samples=true"]
    g = guidance("stable-diffusion-asd-guidance", args.model, not args.no_compile)
    RESULTS.update(micro(g, pu, [3], args.iters, args.warmup_iters, "asd_compiled", first=True))
    runs = (("", no_prefetch, False), ("_prefetch", prefetch, False), ("_prefetch_skip_guards", prefetch, True))
    for tag, extra, skip in runs[-1:] if args.defaults_only else runs:
        with skipping_guards(g, skip):
            r = run_recipe("asd-sd-nerf", args.model, pp, g, args.warmup_steps, args.steps,
                           ["system.prompt_processor.use_perp_neg=false", *extra, *args.overrides])
        RESULTS[f"asd_compiled_lightning{tag}"] = r
        log(f"asd-sd-nerf through launch.py (compiled guidance{tag.replace('_', ' ')}): {r}")
        save(args)


@contextlib.contextmanager
def skipping_guards(g, on: bool):
    """The prebuilt guidance as if built with ``compile_skip_guards`` = ``on`` (the recipe runs reuse one guidance)."""
    from threestudio.models.diffusion.compile import SkipKnownGuards

    def plain(fn):  # noqa: ANN001, ANN202
        return fn.fn if isinstance(fn, SkipKnownGuards) else fn

    saved = (g._unet_fn, g._encode_fn)
    if getattr(g, "compiled", False):
        g._unet_fn, g._encode_fn = plain(g._unet_fn), plain(g._encode_fn)
        if on:
            g._unet_fn = SkipKnownGuards(g._unet_fn)
            g._encode_fn = SkipKnownGuards(g._encode_fn)
    try:
        yield
    finally:
        g._unet_fn, g._encode_fn = saved


def report(args: argparse.Namespace) -> None:
    R = RESULTS
    lines = [f"\n## Guidance benchmark ({R.get('device')}, torch {R.get('torch')}, diffusers {R.get('diffusers')})\n",
             "| what | value |", "|---|---|"]

    def row(name: str, value: Any, fmt: str = "{:.2f}") -> None:
        if value is not None:
            lines.append(f"| {name} | {fmt.format(value) if isinstance(value, (int, float)) else value} |")

    for b in (2, 3, 5):
        row(f"UNet fp16 eager, batch {b} (ms)", R.get(f"eager_unet_b{b}_ms"))
    row("VAE encode fwd+bwd 512^2 eager (ms)", R.get("eager_vae_fwd_bwd_ms"))
    row("UNet compiled (CUDA graphs), batch 2 (ms)", R.get("compiled_unet_b2_ms"))
    row("VAE encode fwd+bwd compiled (ms)", R.get("compiled_vae_fwd_bwd_ms"))
    vae = R.get("eager_vae_fwd_bwd_ms")
    floor_sds = (R["compiled_unet_b2_ms"] + R["compiled_vae_fwd_bwd_ms"]) if "compiled_unet_b2_ms" in R else None
    row("compiled vs eager SDS gradient, relative error", R.get("compiled_vs_eager_grad_rel_err"), "{:.2e}")
    row("dreamfusion-sd floor = compiled UNet CFG + compiled VAE fwd+bwd (ms)", floor_sds)
    row("  (same with the eager VAE, ms)", (R["compiled_unet_b2_ms"] + vae) if floor_sds and vae else None)
    for key, name in (("dreamfusion_eager", "dreamfusion-sd step, eager guidance (ms)"),
                      ("dreamfusion_compiled", "dreamfusion-sd step, compiled guidance (ms)")):
        r = R.get(key) or {}
        row(name, r.get("step_ms"))
        row("  median step-to-step interval (ms)", r.get("step_interval_median_ms"))
        if r.get("step_ms") and floor_sds:
            row(f"  {key.split('_')[1]} step / floor (mean, median)",
                f"{r['step_ms'] / floor_sds:.2f}, {r.get('step_interval_median_ms', float('nan')) / floor_sds:.2f}")
    r = R.get("dreamfusion_compiled_fd_normals") or {}
    row("dreamfusion-sd step, compiled, finite-difference normals (ms)", r.get("step_ms"))
    if r.get("step_ms") and floor_sds:
        row("  fd-normals step / floor", r["step_ms"] / floor_sds)
    for key in ("dreamfusion_breakdown_analytic", "dreamfusion_breakdown_fd", "asd_breakdown"):
        b = R.get(key)
        if b:
            row(f"{key.replace('_', ' ')}: plain-loop step / data / render fwd / guidance fwd / backward / optim (ms)",
                " / ".join(f"{b[k]:.2f}" for k in ("loop_step_ms", "data_ms", "render_fwd_ms", "guidance_fwd_ms",
                                                    "backward_ms", "optimizer_ms")))
    r = R.get("dreamfusion_compiled") or {}
    row("dreamfusion-sd peak GPU memory allocated / reserved (GB)",
        f"{r['peak_allocated_gb']:.2f} / {r['peak_reserved_gb']:.2f}" if "peak_allocated_gb" in r else None)
    row("Dynamo graphs before/after the timed steps (recompiles = difference)",
        f"{r.get('graphs_before')} -> {r.get('graphs_after')}" if r else None)
    first = sum(R.get(k, 0.0) for k in ("compiled_unet_b2_first_call_s", "compiled_vae_first_call_s"))
    row("compile, first run (empty cache): UNet + VAE first calls (s)",
        f"{R.get('compiled_unet_b2_first_call_s', 0):.1f} + {R.get('compiled_vae_first_call_s', 0):.1f} = {first:.1f}")
    if "warm_unet_b2_first_call_s" in R:
        second = R["warm_unet_b2_first_call_s"] + R["warm_vae_first_call_s"]
        row("compile, second run (warm inductor cache): UNet + VAE first calls (s)",
            f"{R['warm_unet_b2_first_call_s']:.1f} + {R['warm_vae_first_call_s']:.1f} = {second:.1f}")
    rows = R.get("asd_rows", 3)
    if f"asd_compiled_unet_b{rows}_ms" in R:
        floor_asd = R[f"asd_compiled_unet_b{rows}_ms"] + R["asd_compiled_vae_fwd_bwd_ms"]
        row(f"ASD UNet compiled, batch {rows} (ms)", R[f"asd_compiled_unet_b{rows}_ms"])
        row(f"asd-sd-nerf floor ({rows} evaluations, ms)", floor_asd)
        r = R.get("asd_compiled") or {}
        row("asd-sd-nerf step, compiled (ms)", r.get("step_ms"))
        row("  median step-to-step interval (ms)", r.get("step_interval_median_ms"))
        if r.get("step_ms"):
            row("  asd step / floor (mean, median)",
                f"{r['step_ms'] / floor_asd:.2f}, {r.get('step_interval_median_ms', float('nan')) / floor_asd:.2f}")
        row("asd-sd-nerf peak GPU memory allocated (GB)", r.get("peak_allocated_gb"))
        row("asd Dynamo graphs before/after", f"{r.get('graphs_before')} -> {r.get('graphs_after')}" if r else None)
    print("\n".join(lines), flush=True)
    save(args)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
