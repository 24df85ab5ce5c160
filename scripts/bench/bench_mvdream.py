#!/usr/bin/env python
"""Benchmark MVDream guidance: the multi-view UNet (eager vs torch.compile with CUDA graphs), the VAE encode, the
guidance step and a full recipe training step against their floor, and peak GPU memory.

Full-size random-weight models built from the real architectures (sd-v2.1-base-4view: the SD-2.1-base UNet plus the
camera embedding and multi-view attention; the SD VAE), fp16, no download. Timings are medians of CUDA-event
timings after warm-up (a host timer on CPU). Rows:

- ``unet``: one no-grad UNet forward at ``--evals`` rows of 32x32 latents (8 = SDS: 4 views x [cond, uncond];
  12 = ASD: 4 views x [cond, uncond, cond at t+Δt]), eager and compiled;
- ``vae``: VAE encode forward + backward to the images at 4 x 256^2, eager and compiled;
- ``guidance``: one ``mvdream-sds-guidance`` / ``mvdream-asd-guidance`` call on 4 renders of 64^2 (resized to 256^2,
  encoded, one batched UNet call, CFG, loss) plus the backward to the renders;
- ``step``: a full training step of ``configs/mvdream-sd21.yaml`` / ``configs/asd-mv-nerf.yaml`` (draw cameras,
  render the NeRF at 64^2 or 256^2, guidance, regularisers, backward, optimizer) with ``--system``;
- ``floor`` = compiled UNet (8 or 12 rows) + compiled VAE encode fwd+bwd, timed alone in the same run;
  ``ratio`` = step / floor.

The compile time of the first call is reported, and with ``--compile-twice`` the script runs itself twice in child
processes sharing a fresh inductor cache, so the second figure is a warm start. Recompiles in the timed loops are
counted (dynamo's unique graphs; they must stay 0).

    python scripts/bench/bench_mvdream.py --json mvdream.json                 # GPU, full size
    python scripts/bench/bench_mvdream.py --system --compile-twice            # + recipe steps, cold/warm compile
    python scripts/bench/bench_mvdream.py --tiny                              # CPU smoke run, tiny models
    python scripts/bench/bench_mvdream.py --launch --profile DIR              # recipes via launch.py vs floors
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from threestudio.models.diffusion.mvdream import loading  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


# ------------------------------------------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(fn: Callable[[], Any], device: torch.device, warmup: int, rep: int) -> float:
    """Median milliseconds of ``fn`` after ``warmup`` calls (CUDA events on a GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: List[float] = []
    for _ in range(rep):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def first_call_seconds(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def unique_graphs() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # pragma: no cover
        return -1


def peak_mb(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ------------------------------------------------------------------------------------------------------ pieces
def make_guidance(kind: str, models: loading.MVDreamModels, device: torch.device, compile_: bool,
                  image_size: int, n_view: int) -> Any:
    import threestudio

    name = "mvdream-sds-guidance" if kind == "sds" else "mvdream-asd-guidance"
    cfg = {"image_size": image_size, "n_view": n_view, "compile": compile_,
           "half_precision_weights": device.type == "cuda"}
    return threestudio.find(name, "guidance")(cfg, device, models)


def prompt_utils(dim: int, device: torch.device) -> Any:
    from threestudio.models.prompt_processors.base import PromptProcessorOutput

    g = torch.Generator().manual_seed(0)
    e = torch.randn(1, 77, dim, generator=g)
    return PromptProcessorOutput(e, torch.randn(1, 77, dim, generator=g), e.expand(4, -1, -1).clone(),
                                 torch.randn(4, 77, dim, generator=g)).to(device)


def cameras(n: int, device: torch.device):
    elev = torch.full((n,), 15.0, device=device)
    azim = (torch.arange(n, device=device) % 4) * 90.0
    dist = torch.full((n,), 2.0, device=device)
    return elev, azim, dist


def run_compile_only(args: argparse.Namespace) -> Dict[str, Any]:
    """Child process of --compile-twice: build, compile and run the guidance once; report seconds."""
    device = torch.device(args.device)
    models = loading.random_mvdream_models(args.preset, components=("unet", "vae"), device=device)
    out: Dict[str, Any] = {}
    for kind in ("sds", "asd"):
        g = make_guidance(kind, models, device, True, args.image_size, args.views)
        pu = prompt_utils(g.cross_attention_dim, device)
        rgb = torch.rand(args.views, args.render, args.render, 3, device=device, requires_grad=True)
        e, a, d = cameras(args.views, device)

        def step() -> None:
            o = g(rgb, pu, e, a, d)
            o["loss_sds" if kind == "sds" else "loss_asd"].backward()

        out[f"{kind}_first_call_s"] = first_call_seconds(step, device)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny random models on CPU (a smoke run of the script)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--evals", default="8,12", help="UNet rows per call to time (8: SDS, 12: ASD, 4 views)")
    ap.add_argument("--image-size", type=int, default=256, help="VAE input side (latents: /8)")
    ap.add_argument("--render", type=int, default=64, help="render side fed to the guidance step")
    ap.add_argument("--compile", dest="compile", action="store_true", default=None)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--compile-mode", default="reduce-overhead")
    ap.add_argument("--compile-twice", action="store_true",
                    help="time the first compiled call in two child processes sharing a fresh inductor cache")
    ap.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--system", action="store_true", help="also time full recipe training steps")
    ap.add_argument("--system-res", default="64,256", help="render resolutions for --system")
    ap.add_argument("--steps", type=int, default=20, help="timed recipe steps per setting")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rep", type=int, default=50)
    ap.add_argument("--launch", action="store_true",
                    help="only the MVDream recipes trained through launch.py (Lightning, defaults as configured), "
                         "each against the floor at its shapes (see LAUNCH_RUNS)")
    ap.add_argument("--runs", default=None,
                    help="--launch: comma-separated keys of LAUNCH_RUNS (default: all): " +
                         ", ".join(r[0] for r in LAUNCH_RUNS))
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDE;OVERRIDE",
                    help="--launch: repeat each run with these config overrides (';'-separated; '+gc_freeze' freezes "
                         "the garbage collector's objects before the window), reported as KEY@NAME; repeatable; "
                         "'NAME=' alone is the recipe as shipped")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="--launch: profiler tables and a sync trace of each run's extra steps, written to DIR")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    args.preset = "tiny" if args.tiny else "full"
    device = torch.device(args.device)
    if args.tiny:
        args.image_size, args.render = min(args.image_size, 64), min(args.render, 32)
        args.warmup, args.rep, args.steps = min(args.warmup, 1), min(args.rep, 3), min(args.steps, 2)
        args.system_res = ",".join(str(min(int(r), 16)) for r in args.system_res.split(","))
    compile_ = args.compile if args.compile is not None else device.type == "cuda"
    if args.compile_only:
        print("COMPILE_JSON " + json.dumps(run_compile_only(args)))
        return
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    res: Dict[str, Any] = dict(device=dev_name, torch=torch.__version__, preset=args.preset, views=args.views,
                               image_size=args.image_size, latent=args.image_size // 8, compile=compile_,
                               compile_mode=args.compile_mode, rows=[])
    print(f"# {dev_name}, torch {torch.__version__}, preset {args.preset}, {args.views} views, "
          f"{args.image_size}^2 images -> {args.image_size // 8}^2 latents, compile={compile_}")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    models = loading.random_mvdream_models(args.preset, components=("unet", "vae"), device=device)
    for m in (models.unet, models.vae):
        loading.cast(m.requires_grad_(False).eval(), dtype=dtype)
    res["build_s"] = time.perf_counter() - t0
    if args.launch:
        launch_mode(args, models, device, compile_, res)
        return
    unet, vae = models.unet, models.vae
    lat = args.image_size // 8
    ctx_dim = unet.cross_attention_dim
    rows: List[Dict[str, Any]] = res["rows"]
    floors: Dict[int, float] = {}

    def add(name: str, ms: float, **kw: Any) -> None:
        kw = {k: v for k, v in kw.items() if not (k == "peak_mb" and device.type != "cuda")}
        rows.append(dict(name=name, ms=ms, **kw))
        extra = " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items())
        print(f"{name:<44s} {ms:9.2f} ms  {extra}", flush=True)

    # ---------------------------------------------------------------- UNet
    def unet_fn(x, t, c, cam):
        return unet(x, t, c, cam, num_frames=args.views)

    compiled_unet = torch.compile(unet_fn, mode=args.compile_mode, fullgraph=True, dynamic=False) if compile_ \
        else None
    for n in [int(v) for v in args.evals.split(",")]:
        g = torch.Generator(device=device).manual_seed(n)
        x = torch.randn(n, 4, lat, lat, device=device, dtype=dtype, generator=g)
        t = torch.full((n,), 500, device=device, dtype=torch.long)
        c = torch.randn(n, 77, ctx_dim, device=device, dtype=dtype, generator=g)
        cam = torch.randn(n, 16, device=device, dtype=dtype, generator=g)
        with torch.no_grad():
            reset_peak(device)
            ms = bench(lambda: unet_fn(x, t, c, cam), device, args.warmup, args.rep)
            add(f"unet eager, {n} rows of {lat}^2", ms, peak_mb=peak_mb(device) or 0.0)
            if compiled_unet is not None:
                first = first_call_seconds(lambda: compiled_unet(x, t, c, cam), device)
                g0 = unique_graphs()
                ms_c = bench(lambda: compiled_unet(x, t, c, cam), device, args.warmup, args.rep)
                add(f"unet compiled ({args.compile_mode}), {n} rows", ms_c, first_call_s=first,
                    recompiles=unique_graphs() - g0, speedup=ms / ms_c)
                floors[n] = ms_c
            else:
                floors[n] = ms

    # ---------------------------------------------------------------- VAE encode fwd + bwd
    def encode(imgs):
        return vae.encode(imgs.to(dtype) * 2.0 - 1.0).latent_dist.sample() * 0.18215

    imgs = torch.rand(args.views, 3, args.image_size, args.image_size, device=device, requires_grad=True)

    def vae_step(fn):
        def run():
            fn(imgs).float().sum().backward()
        return run

    reset_peak(device)
    vae_ms = bench(vae_step(encode), device, args.warmup, args.rep)
    add(f"vae encode fwd+bwd eager, {args.views} x {args.image_size}^2", vae_ms, peak_mb=peak_mb(device) or 0.0)
    vae_floor = vae_ms
    if compile_:
        cenc = torch.compile(encode, mode=args.compile_mode, fullgraph=True, dynamic=False)
        first = first_call_seconds(vae_step(cenc), device)
        g0 = unique_graphs()
        ms_c = bench(vae_step(cenc), device, args.warmup, args.rep)
        add("vae encode fwd+bwd compiled", ms_c, first_call_s=first, recompiles=unique_graphs() - g0,
            speedup=vae_ms / ms_c)
        vae_floor = ms_c
    res["floor_ms"] = {str(n): floors[n] + vae_floor for n in floors}

    # ---------------------------------------------------------------- guidance steps
    modes = [False, True] if compile_ else [False]
    for kind, n in (("sds", 2 * args.views), ("asd", 3 * args.views)):
        for comp in modes:
            g = make_guidance(kind, models, device, comp, args.image_size, args.views)
            pu = prompt_utils(ctx_dim, device)
            rgb = torch.rand(args.views, args.render, args.render, 3, device=device, requires_grad=True)
            e, a, d = cameras(args.views, device)
            key = "loss_sds" if kind == "sds" else "loss_asd"

            def step() -> None:
                g(rgb, pu, e, a, d)[key].backward()

            first = first_call_seconds(step, device)
            reset_peak(device)
            g0 = unique_graphs()
            ms = bench(step, device, args.warmup, args.rep)
            floor = floors.get(n, float("nan")) + vae_floor
            add(f"guidance {kind} step {'compiled' if comp else 'eager'} ({n} rows)", ms, first_call_s=first,
                recompiles=unique_graphs() - g0, peak_mb=peak_mb(device) or 0.0, floor_ms=floor,
                ratio=ms / floor)

    # ---------------------------------------------------------------- full recipe steps
    if args.system:
        for recipe, kind in (("mvdream-sd21", "sds"), ("asd-mv-nerf", "asd")):
            for r in sorted({int(v) for v in args.system_res.split(",")}):
                for comp in modes:
                    ms, peak, recomp = time_recipe_steps(recipe, kind, models, device, comp, r, args)
                    n = (2 if kind == "sds" else 3) * args.views
                    floor = floors.get(n, float("nan")) + vae_floor
                    add(f"{recipe} step {r}^2 {'compiled' if comp else 'eager'}", ms, peak_mb=peak or 0.0,
                        recompiles=recomp, floor_ms=floor, ratio=ms / floor)

    # ---------------------------------------------------------------- compile times, cold and warm
    if args.compile_twice and compile_:
        cache = tempfile.mkdtemp(prefix="mvdream-inductor-")
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        base = [sys.executable, os.path.abspath(__file__), "--compile-only", "--device", args.device,
                "--views", str(args.views), "--image-size", str(args.image_size), "--render", str(args.render),
                "--compile-mode", args.compile_mode] + (["--tiny"] if args.tiny else [])
        for run in ("first", "second"):
            t0 = time.perf_counter()
            p = subprocess.run(base, env=env, capture_output=True, text=True)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("COMPILE_JSON ")]
            if p.returncode != 0 or not line:
                print(p.stdout[-2000:] + p.stderr[-2000:])
                continue
            out = json.loads(line[0][len("COMPILE_JSON "):])
            out["process_s"] = time.perf_counter() - t0
            res[f"compile_{run}_run"] = out
            print(f"compile, {run} run (fresh cache {cache}): " +
                  ", ".join(f"{k}={v:.1f}" for k, v in out.items()), flush=True)

    # ---------------------------------------------------------------- table
    print()
    print(f"| what ({dev_name}) | ms | notes |")
    print("|---|---|---|")
    for row in rows:
        notes = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                          if k not in ("name", "ms"))
        print(f"| {row['name']} | {row['ms']:.2f} | {notes} |")
    for run in ("first", "second"):
        if f"compile_{run}_run" in res:
            o = res[f"compile_{run}_run"]
            print(f"| compile, {run} run | | sds first call {o['sds_first_call_s']:.1f} s, asd first call "
                  f"{o['asd_first_call_s']:.1f} s, process {o['process_s']:.1f} s |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


# The runs of --launch: (key, recipe, guidance, views per step, render side, UNet rows per view, what it is).
# mvdream-sd21 trains 2 objects x 4 views at 64^2 for 5000 steps, then 1 x 4 views at 256^2; asd-mv-nerf trains 1 x 4
# views at 64^2 for 10000 of its 25000 steps. The guidance always sees 256^2 images (32^2 latents). The order shares
# compiled shapes: 8 UNet rows (twice), then 16, then ASD's 12.
LAUNCH_RUNS = (
    ("sd21_64_x4", "mvdream-sd21", "sds", 4, 64, 2, "mvdream-sd21 with data.batch_size=[4,4]: 4 views at 64^2"),
    ("sd21_256_x4", "mvdream-sd21", "sds", 4, 256, 2, "mvdream-sd21, steps >= 5000: 4 views rendered at 256^2"),
    ("sd21_64_x8", "mvdream-sd21", "sds", 8, 64, 2, "mvdream-sd21, steps < 5000: 2 x 4 views rendered at 64^2"),
    ("asd_64_x4", "asd-mv-nerf", "asd", 4, 64, 3, "asd-mv-nerf, steps < 10000: 4 views rendered at 64^2"),
)


def guidance_floor(g: Any, calls: Dict[str, Any], device: torch.device, warmup: int, rep: int) -> Dict[str, float]:
    """The guidance's own (compiled) UNet and VAE encode fwd+bwd, each timed alone on the arguments of its last call
    in the recipe run (``calls``, see :func:`recording`: same shapes, strides, dtypes and grad mode, so the compiled
    graphs the run used serve them): the floor of a training step at those shapes."""
    (ua, uk, ugrad), (ea, ek, egrad) = calls["forward_unet"], calls["encode_images"]
    imgs = ea[0].detach().clone().requires_grad_(ea[0].requires_grad)

    def unet() -> None:
        with torch.set_grad_enabled(ugrad):
            g.forward_unet(*ua, **uk)

    def vae() -> None:
        imgs.grad = None
        with torch.set_grad_enabled(egrad):
            g.encode_images(imgs, *ea[1:], **ek).sum().backward()

    out = {"unet_rows": int(ua[0].shape[0]), "vae_images": int(imgs.shape[0]),
           "unet_first_call_s": first_call_seconds(unet, device), "unet_ms": bench(unet, device, warmup, rep),
           "vae_first_call_s": first_call_seconds(vae, device), "vae_ms": bench(vae, device, warmup, rep)}
    out["floor_ms"] = out["unet_ms"] + out["vae_ms"]
    return out


@contextlib.contextmanager
def recording(g: Any, calls: Dict[str, Any]):
    """Keep the arguments (and grad mode) of the last ``forward_unet`` and ``encode_images`` calls of ``g``."""
    def wrap(name: str) -> Callable[..., Any]:
        fn = getattr(g, name)

        def rec(*a: Any, **k: Any) -> Any:
            calls[name] = (a, k, torch.is_grad_enabled())
            return fn(*a, **k)
        return rec

    g.forward_unet, g.encode_images = wrap("forward_unet"), wrap("encode_images")
    try:
        yield calls
    finally:
        del g.forward_unet, g.encode_images


def launch_mode(args: argparse.Namespace, models: loading.MVDreamModels, device: torch.device, compile_: bool,
                res: Dict[str, Any]) -> None:
    """The MVDream recipes through launch.py (``bench_guidance.run_recipe``: Lightning loop, step time over
    ``--steps`` steps after ``--warmup``, recompiles, peak memory), one run per ``LAUNCH_RUNS`` entry picked by
    ``--runs``; after each, the floor at its shapes with the same guidance's compiled functions (so the compile
    happened during the run's warm-up and the floor's first call is already warm)."""
    import importlib.util

    from omegaconf import OmegaConf

    import threestudio
    from threestudio.utils.config import load_config

    if device.type == "cuda":  # nerfacc compiles its CUDA code on first use: in the background, meanwhile
        subprocess.Popen([sys.executable, "-c", "from nerfacc.cuda._backend import _C"])
    spec = importlib.util.spec_from_file_location("bench_guidance", os.path.join(os.path.dirname(__file__),
                                                                                "bench_guidance.py"))
    bg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bg)  # type: ignore[union-attr]
    wanted = args.runs.split(",") if args.runs else [r[0] for r in LAUNCH_RUNS]
    unknown = sorted(set(wanted) - {r[0] for r in LAUNCH_RUNS})
    if unknown:
        raise SystemExit(f"--runs: unknown {unknown}; choose from {[r[0] for r in LAUNCH_RUNS]}")
    variants = []
    for spec in args.variant or ["="]:
        name, sep, ovr = spec.partition("=")
        if not sep:
            raise SystemExit(f"--variant {spec!r}: expected NAME=OVERRIDE;OVERRIDE (or 'NAME=' for none)")
        variants.append((name, [o for o in ovr.split(";") if o]))
    guidances: Dict[str, Any] = {}
    for (key0, recipe, kind, v, render, per_view, what0), (vname, vovr) in (
            (run, var) for run in LAUNCH_RUNS for var in variants):
        if key0 not in wanted:
            continue
        key = f"{key0}@{vname}" if vname else key0
        what = f"{what0} [{vname}: {' '.join(vovr) or 'as shipped'}]" if vname else what0
        if kind not in guidances:  # one guidance per kind, built as the recipe builds it, reused across runs
            cfg = load_config(os.path.join(REPO, "configs", recipe + ".yaml"),
                              cli_args=["system.prompt_processor.prompt=x"])
            gcfg = OmegaConf.to_container(cfg.system.guidance, resolve=True)
            gcfg.update(image_size=args.image_size, compile=compile_, half_precision_weights=device.type == "cuda")
            guidances[kind] = threestudio.find(cfg.system.guidance_type, "guidance")(gcfg, device, models)
        g = guidances[kind]
        pu = prompt_utils(g.cross_attention_dim, device)

        class Processor:  # what run_recipe's build step calls: the bench's prompt embeddings
            def __call__(self) -> Any:
                return pu

        r = render if not args.tiny else 16
        extra = [f"data.width=[{r},{r}]", f"data.height=[{r},{r}]", f"data.batch_size=[{v},{v}]",
                 f"system.guidance.image_size={args.image_size}"]
        if args.tiny:
            extra += ["system.renderer.num_samples_per_ray=16", "system.geometry.pos_encoding_config.n_levels=2",
                      "system.geometry.pos_encoding_config.log2_hashmap_size=10"]
        extra += [o for o in vovr if o != "+gc_freeze"]
        prof = os.path.join(args.profile, key) if args.profile else None
        if prof:
            os.makedirs(args.profile, exist_ok=True)
        t0 = time.perf_counter()
        with recording(g, {}) as calls:
            out = bg.run_recipe(recipe, "unused-the-bench-builds-the-guidance", Processor(), g, args.warmup,
                                args.steps, extra, profile_to=prof, gc_freeze="+gc_freeze" in vovr)
        out["run_s"] = time.perf_counter() - t0
        if not {"forward_unet", "encode_images"} <= set(calls):
            res[f"launch_{key}"] = out
            print(f"{what}: the run never reached the guidance (rc {out.get('rc')}); no floor", flush=True)
            continue
        out.update(guidance_floor(g, calls, device, args.warmup, args.rep))
        if out["unet_rows"] != v * per_view:
            raise RuntimeError(f"{key}: the UNet ran at {out['unet_rows']} rows, expected {v * per_view}")
        out["ratio_mean"] = out.get("step_ms", float("nan")) / out["floor_ms"]
        out["ratio_median"] = (out.get("step_interval_median_ms") or float("nan")) / out["floor_ms"]
        out["what"] = what
        res[f"launch_{key}"] = out
        print(f"{what}: step {out.get('step_ms', float('nan')):.2f} ms (median "
              f"{out.get('step_interval_median_ms') or float('nan'):.2f}), floor {out['floor_ms']:.2f} ms = UNet "
              f"{v * per_view} rows {out['unet_ms']:.2f} + VAE {v} x {args.image_size}^2 {out['vae_ms']:.2f}; "
              f"ratio {out['ratio_mean']:.2f} (median {out['ratio_median']:.2f}); {out}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2, default=str)


def time_recipe_steps(recipe: str, kind: str, models: loading.MVDreamModels, device: torch.device, comp: bool,
                      res_px: int, args: argparse.Namespace):
    """Median ms of full training steps of a recipe (cameras, render, guidance, losses, backward, optimizer)."""
    import threestudio
    from threestudio.systems.utils import parse_optimizer
    from threestudio.utils.config import load_config

    # one object of n_view views at one resolution (e.g. 4 views of 256^2; mvdream-sd21 itself starts
    # with 2 objects at 64^2)
    v = args.views
    overrides = ["system.prompt_processor.prompt=a bench", f"data.width=[{res_px},{res_px}]",
                 f"data.height=[{res_px},{res_px}]", f"data.batch_size=[{v},{v}]", f"data.n_view={v}",
                 f"system.guidance.image_size={args.image_size}"]
    if args.tiny:
        overrides += ["system.renderer.num_samples_per_ray=16", "system.geometry.pos_encoding_config.n_levels=2",
                      "system.geometry.pos_encoding_config.log2_hashmap_size=10"]
    cfg = load_config(os.path.join(REPO, "configs", recipe + ".yaml"), cli_args=overrides,
                      exp_root_dir=tempfile.mkdtemp())
    dm = threestudio.find(cfg.data_type, "data")(cfg.data)
    system = threestudio.find(cfg.system_type, "system")(cfg.system).to(device)
    system.train()
    g = make_guidance(kind, models, device, comp, args.image_size, args.views)
    system.guidance = g
    system.prompt_utils = prompt_utils(g.cross_attention_dim, device)
    optim = parse_optimizer(cfg.system.optimizer, system)
    step_i = [0]
    import warnings

    def step() -> None:
        i = step_i[0]
        dm.do_update_step(0, i)
        system.do_update_step(0, i)
        batch = dm.draw_train_batch(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log without a Trainer
            loss = system.training_step(batch, i)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        step_i[0] += 1

    for _ in range(max(args.warmup, 2)):
        step()
    reset_peak(device)
    g0 = unique_graphs()
    ms = bench(step, device, 0, args.steps)
    return ms, peak_mb(device), unique_graphs() - g0


if __name__ == "__main__":
    main()
