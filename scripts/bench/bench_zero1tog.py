#!/usr/bin/env python
"""Benchmark Zero-1-to-G (custom/zero1tog): one stage-2 training step and one full inference, on one GPU with
full-size random-weight models, peak GPU memory of each, optionally with the UNet compiled as our guidance does;
plus the loader check of the full-size UNet against the official tensor layout.

Models (built from their configs on the device, saved to a temporary folder in the SD-image-variations layout, no
download): the SD-image-variations UNet (``model/layout.py``'s ``SD_IMAGE_VARIATIONS_UNET``), the SD VAE
(``AutoencoderKL``), the CLIP ViT-L/14 image encoder with its 768 projection, the DDPM scheduler config. The
system is then built exactly as a run of ``configs/stage2-joint.yaml`` builds it (``zero1tog-system``:
``load_unet`` grows the base UNet into the Zero-1-to-G UNet, 910.8 M parameters, plus its EMA copy), only
``system.init_from`` is left out (stage 1's weights have the same layout).

- ``train_step``: the recipe's per-GPU micro-batch (``data.batch_size`` 16 objects x 6 views x 5 attributes =
  480 latents of 16^2 per UNet call; 128^2 views VAE-encoded in the step) through the system's own
  ``diffusion_inputs`` / UNet / ``diffusion_loss``, fp16 autocast with a GradScaler (``trainer.precision:
  16-mixed``), backward, gradient clipping 1.0, AdamW step (``configure_optimizers``: class embedding x10 lr),
  LR-schedule step and the EMA update of every parameter; median wall time of ``--steps`` steps after ``--warmup``
  (synchronised), peak ``torch.cuda.max_memory_allocated`` over them.
- ``inference``: ``Zero1toGPipeline`` as the ``image-to-gaussians.yaml`` test pass builds it (``system.pipeline()``:
  EMA UNet, DDIM 50 steps, eta 1, CFG 5, one object, both branches batched), fp16 autocast, condition encode +
  sampling + VAE decode to a splatter: seconds per object (median of ``--infer-reps`` after a warm-up), peak memory
  (the optimizer state is freed first; both UNets stay resident, as in a ``--test`` run).
- ``--compile``: the UNet call compiled with :func:`threestudio.models.diffusion.compile.compile_unet_and_vae`
  (``fullgraph=True, dynamic=False``, inductor ``reduce-overhead`` = CUDA graphs, guard skipping: the guidance's
  defaults, ``--compile-mode`` / ``--compile-backend`` to change them), for training (the trained UNet) and for
  inference (the EMA UNet); the first call of each is reported separately (``first_s``; ``compile_s`` = first -
  median), and graphs compiled after it are counted (must stay 0).
- ``loader_check``: the built UNet's state-dict names and shapes against ``model/layout.py``'s official layout of
  the full-size config and its architecture against SD-image-variations', and the saved base UNet folder through
  ``check_unet_folder(require_official=True)`` (what ``load_unet`` checks before loading); not timed.

    python scripts/bench/bench_zero1tog.py --json zero1tog.json              # GPU, full size, eager
    python scripts/bench/bench_zero1tog.py --compile --json zero1tog_c.json  # + compiled UNet
    python scripts/bench/bench_zero1tog.py --tiny --json tiny.json           # CPU smoke run (tests), tiny models
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional

import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

STAGE2 = os.path.join(REPO, "custom", "zero1tog", "configs", "stage2-joint.yaml")

# the SD VAE (sd-image-variations' vae/config.json) and CLIP ViT-L/14 image encoder (image_encoder/config.json)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              norm_num_groups=32, act_fn="silu", sample_size=256, scaling_factor=0.18215)
CLIP_VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    patch_size=14, image_size=224, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)
# tiny counterparts (CPU smoke run): the test suite's shapes, 32^2 views (4^2 latents)
TINY_BASE_UNET = dict(sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(40, 80),
                      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=2,
                      norm_num_groups=8)
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                 patch_size=8, projection_dim=16)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, steps_offset=1, prediction_type="epsilon")


# ------------------------------------------------------------------------------------------------------ helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def allocated_mb(device: torch.device) -> Optional[float]:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None


def unique_graphs() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - diagnostics only
        return -1


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def load_extension() -> None:
    from threestudio.utils.extensions import import_extension

    import_extension(os.path.join(REPO, "custom", "zero1tog"), namespace="custom")


# ------------------------------------------------------------------------------------------------------ models
def write_base_model(folder: str, tiny: bool, device: torch.device, seed: int = 0) -> Dict[str, float]:
    """Random-weight SD-image-variations folder (``unet/`` base UNet, ``vae/``, ``image_encoder/``,
    ``scheduler/``), built on ``device`` from the configs, saved in fp32. Returns timings."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from custom.zero1tog.model.layout import SD_IMAGE_VARIATIONS_UNET

    from threestudio.utils.weights import TINY_VAE

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with torch.device(device):
        parts = {"unet": UNet2DConditionModel(**(TINY_BASE_UNET if tiny else SD_IMAGE_VARIATIONS_UNET)),
                 "vae": AutoencoderKL(**(TINY_VAE if tiny else SD_VAE)),
                 "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**(TINY_CLIP if tiny else
                                                                                    CLIP_VIT_L14)))}
    sync(device)
    build = time.perf_counter() - t0
    for name, m in parts.items():
        m.save_pretrained(os.path.join(folder, name))
    DDPMScheduler(**SCHEDULER).save_pretrained(os.path.join(folder, "scheduler"))
    del parts
    return {"build_s": build, "save_s": time.perf_counter() - t0 - build}


def build_system(folder: str, tiny: bool, batch_size: Optional[int]) -> Any:
    """``zero1tog-system`` from ``configs/stage2-joint.yaml`` on the model folder (``init_from`` left out)."""
    from omegaconf import OmegaConf

    from threestudio.utils.config import load_config

    load_extension()
    from custom.zero1tog.system import Zero1toGSystem

    cli = ["data.dataroot=unused", f"system.pretrained_model_name_or_path={folder}", "system.init_from=null"]
    if tiny:
        cli += ["system.cond_size=32", "system.unet_changes.sample_size=4", "data.batch_size=2"]
    if batch_size:
        cli.append(f"data.batch_size={batch_size}")
    cfg = load_config(STAGE2, cli_args=cli)
    system = Zero1toGSystem(OmegaConf.create(OmegaConf.to_container(cfg.system)))
    return system, cfg


def loader_check(system: Any, folder: str, tiny: bool) -> Dict[str, Any]:
    """The built UNet's tensors against the official layout; the saved base folder through ``check_unet_folder``."""
    from custom.zero1tog.model.layout import (architecture_differences, check_layout, layout_parameter_count,
                                              unet_layout, zero1tog_unet_config)
    from custom.zero1tog.model.loading import UNetLayoutError, check_unet_folder

    found = {k: tuple(v.shape) for k, v in system.unet.state_dict().items()}
    expected = unet_layout(dict(system.unet.config) if tiny else zero1tog_unet_config())
    problems = check_layout(found, expected)
    arch = architecture_differences(dict(system.unet.config))
    folder_problems: List[str] = []
    try:
        check_unet_folder(folder, require_official=not tiny)
    except UNetLayoutError as e:
        folder_problems = e.problems
    ok = not problems and not folder_problems and (tiny or not arch)
    return {"ok": ok, "layout": "tiny config" if tiny else "official (SD-image-variations + Zero-1-to-G)",
            "tensors": len(found), "expected_tensors": len(expected),
            "parameters": int(sum(p.numel() for p in system.unet.parameters())),
            "layout_parameters": layout_parameter_count(expected), "problems": problems[:20],
            "architecture_differences": [] if tiny else arch, "base_folder_problems": folder_problems[:20]}


# ------------------------------------------------------------------------------------------------------ compile
def compiled_unet(unet: Any, args: argparse.Namespace, label: str) -> Callable:
    """``fn(sample, t, tokens, labels) -> eps`` for 5 attributes with joint attention, compiled as the diffusion
    guidances compile their UNet (``compile_unet_and_vae``; no VAE)."""
    from threestudio.models.diffusion.compile import CompileConfig, compile_unet_and_vae

    d = int(unet.config.num_attributes)

    def unet_fn(sample: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return unet(sample, t, tokens, class_labels=labels, num_attributes=d, joint_attention=True).sample

    opts = CompileConfig(mode=args.compile_mode, backend=args.compile_backend, vae=False,
                         skip_guards=not args.no_skip_guards)
    fn, _ = compile_unet_and_vae(unet_fn, lambda x: x, opts, label)
    return fn


class CompiledUNetProxy:
    """Stands in for the UNet inside :class:`Zero1toGPipeline`: calls go to the compiled function, everything else
    (config, parameters, to, eval) to the module."""

    def __init__(self, unet: Any, fn: Callable) -> None:
        self._unet = unet
        self._fn = fn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._unet, name)

    def eval(self) -> "CompiledUNetProxy":
        self._unet.eval()
        return self

    def to(self, *a: Any, **k: Any) -> "CompiledUNetProxy":
        self._unet.to(*a, **k)
        return self

    def __call__(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor,
                 class_labels: Optional[torch.Tensor] = None, num_attributes: Optional[int] = None) -> Any:
        if num_attributes not in (None, int(self._unet.config.num_attributes)):
            raise ValueError("the compiled UNet runs all attributes")
        t = torch.as_tensor(timestep, device=sample.device)
        return SimpleNamespace(sample=self._fn(sample, t, encoder_hidden_states, class_labels))


def mark_step() -> None:
    fn = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
    if fn is not None:
        fn()


# ------------------------------------------------------------------------------------------------------ benches
def bench_train(system: Any, data_cfg: Any, device: torch.device, args: argparse.Namespace,
                amp: bool) -> Dict[str, Any]:
    from custom.zero1tog.system import ema_decay, ema_update

    c = system.cfg
    b = int(data_cfg.batch_size)
    side = int(system.unet.config.sample_size) * 8
    v, d = int(system.unet.config.num_views), int(system.unet.config.num_attributes)
    g = torch.Generator().manual_seed(0)
    batch = {"attributes": (torch.rand(b, d, v, 3, side, side, generator=g) * 2 - 1).to(device),
             "cond_rgb": torch.rand(b, 3, side, side, generator=g).to(device),
             "index": torch.arange(b, device=device)}
    system.unet.train()
    opt_cfg = system.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    params = [p for p in system.unet.parameters() if p.requires_grad]
    clip = float(getattr(args, "grad_clip", 1.0))
    unet_fn = compiled_unet(system.unet, args, "Zero-1-to-G (training)") if args.compile else None
    autocast = (lambda: torch.autocast(device.type, dtype=torch.float16)) if amp else contextlib.nullcontext

    def step() -> None:
        if unet_fn is not None:
            mark_step()
        with autocast():
            inp = system.diffusion_inputs(batch, c.stage)
            if unet_fn is None:
                pred = system.run_unet(system.unet, inp, c.stage)
            else:
                dt = next(system.unet.parameters()).dtype
                pred = unet_fn(inp["sample"].to(dt), inp["timesteps"], inp["clip"].to(dt),
                               inp["labels"].to(dt)).float()
            loss = system.loss_weight("diffusion", 1.0) * system.diffusion_loss(pred, inp)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if c.ema.enabled:
            ema_update(system.unet_ema, system.unet, ema_decay(c.ema.decay, int(system.ema_updates)))
            system.ema_updates += 1

    reset_peak(device)
    resident = allocated_mb(device)
    first = timed(step, device)
    for _ in range(max(0, args.warmup - 1)):
        step()
    graphs = unique_graphs()
    times = [timed(step, device) for _ in range(args.steps)]
    med = statistics.median(times)
    out = {"objects": b, "views": v, "attributes": d, "unet_batch": b * v * d, "resolution": side,
           "latent": side // 8, "precision": "16-mixed" if amp else "32", "steps": args.steps,
           "warmup": max(1, args.warmup), "median_s": med, "min_s": min(times), "times_s": times, "first_s": first,
           "compile_s": (first - med) if args.compile else None, "peak_mem_mb": peak_mb(device),
           "resident_mb_before": resident, "recompiles_in_timed_loop": (unique_graphs() - graphs) if args.compile
           else None, "optimizer": type(opt).__name__, "trainable_parameters": int(sum(p.numel() for p in params)),
           "ema": bool(c.ema.enabled)}
    # the optimizer state goes with this frame (nothing else holds it) before the inference bench
    system.unet.zero_grad(set_to_none=True)
    system.unet.eval()
    return out


def bench_inference(system: Any, device: torch.device, args: argparse.Namespace, amp: bool) -> Dict[str, Any]:
    c = system.cfg
    c.steps = int(args.infer_steps)
    pipe = system.pipeline()
    if args.compile:
        pipe.unet = CompiledUNetProxy(pipe.unet, compiled_unet(pipe.unet, args, "Zero-1-to-G (inference, EMA)"))
    side = int(system.unet.config.sample_size) * 8 if args.tiny else 320
    rgb = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1)).to(device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.float16)) if amp else contextlib.nullcontext
    result: Dict[str, Any] = {}

    def run() -> None:
        with torch.no_grad(), autocast():
            result.update(pipe(rgb, torch.Generator().manual_seed(0)))

    reset_peak(device)
    resident = allocated_mb(device)
    first = timed(run, device)
    graphs = unique_graphs()
    times = []
    for _ in range(args.infer_reps):
        run()
        times.append(float(result["seconds"]))
    med = statistics.median(times)
    sp = result["splatter"]
    return {"steps": pipe.cfg.num_inference_steps, "guidance_scale": pipe.cfg.guidance_scale, "eta": pipe.cfg.eta,
            "objects": 1, "unet_batch": 2 * pipe.num_attributes * pipe.num_views, "precision": "16-mixed" if amp
            else "32", "reps": args.infer_reps, "seconds_per_object": med, "times_s": times, "first_s": first,
            "compile_s": (first - med) if args.compile else None, "peak_mem_mb": peak_mb(device),
            "resident_mb_before": resident, "recompiles_in_timed_loop": (unique_graphs() - graphs) if args.compile
            else None, "splatter_shape": list(sp.shape), "splatter_finite": bool(torch.isfinite(sp).all()),
            "unet_weights": "ema" if (c.use_ema and c.ema.enabled) else "raw"}


def guarded(fn: Callable[[], Dict[str, Any]], device: torch.device, what: str) -> Dict[str, Any]:
    """``fn()``, or ``{"error": ...}`` when the GPU runs out of memory (then the next bench still runs)."""
    import gc

    try:
        return fn()
    except torch.cuda.OutOfMemoryError as e:
        msg = f"CUDA out of memory at {what}: {str(e).splitlines()[0]}"
        peak = peak_mb(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    print(f"error: {msg}", file=sys.stderr)
    return {"error": msg, "peak_mem_mb": peak}


# ------------------------------------------------------------------------------------------------------ main
def fmt(x: Any, unit: str = "", nd: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{nd}f}{unit}" if isinstance(x, float) else f"{x}{unit}"


def print_table(res: Dict[str, Any]) -> None:
    t, i, lc = res["train_step"], res["inference"], res["loader_check"]
    print(f"\nZero-1-to-G on {res['device_name']} ({'tiny models' if res['tiny'] else 'full size'}, "
          f"{'compiled UNet' if res['compile'] else 'eager'}, torch {res['torch']})")
    rows = [("what", "median s", "first call s", "compile s", "peak MB", "shape")]
    if "error" in t:
        rows.append(("stage-2 train step", "-", "-", "-", fmt(t["peak_mem_mb"], nd=0), t["error"][:100]))
    else:
        rows.append(("stage-2 train step", fmt(t["median_s"]), fmt(t["first_s"]), fmt(t["compile_s"]),
                     fmt(t["peak_mem_mb"], nd=0), f"{t['objects']} obj x {t['views']} views x {t['attributes']} "
                     f"attr = {t['unet_batch']} x {t['latent']}^2 latents, {t['precision']}"))
    if "error" in i:
        rows.append(("inference", "-", "-", "-", fmt(i["peak_mem_mb"], nd=0), i["error"][:100]))
    else:
        rows.append((f"inference ({i['steps']} DDIM, CFG {i['guidance_scale']:g})", fmt(i["seconds_per_object"]),
                     fmt(i["first_s"]), fmt(i["compile_s"]), fmt(i["peak_mem_mb"], nd=0),
                     f"1 object, UNet batch {i['unet_batch']}, {i['precision']}"))
    w = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for r in rows:
        print("  ".join(s.ljust(w[k]) for k, s in enumerate(r)))
    print(f"loader check: {'PASS' if lc['ok'] else 'FAIL'} ({lc['layout']}): {lc['tensors']} tensors, "
          f"{lc['parameters'] / 1e6:.1f} M parameters (layout {lc['layout_parameters'] / 1e6:.1f} M); "
          f"{len(lc['problems'])} layout, {len(lc['architecture_differences'])} architecture, "
          f"{len(lc['base_folder_problems'])} base-folder differences")
    for p in (lc["problems"] + lc["architecture_differences"] + lc["base_folder_problems"])[:10]:
        print(f"    {p}")


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny models on the CPU (smoke run)")
    p.add_argument("--compile", action="store_true", help="compile the UNet as the guidances do")
    p.add_argument("--compile-mode", default="reduce-overhead")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--no-skip-guards", action="store_true")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 10; tiny 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up training steps, incl. the first (default 3)")
    p.add_argument("--batch", type=int, default=None, help="objects per step (default: the recipe's 16)")
    p.add_argument("--infer-steps", type=int, default=None, help="DDIM steps (default 50, the authors'; tiny 2)")
    p.add_argument("--infer-reps", type=int, default=None, help="timed inference runs (default 3; tiny 1)")
    p.add_argument("--fp32", action="store_true", help="no fp16 autocast on the GPU")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    p.add_argument("--model-dir", default=None,
                   help="keep the random model folder here and reuse it on later runs (default: a temp folder)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    tiny = args.tiny
    args.steps = args.steps if args.steps is not None else (2 if tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 3)
    args.infer_steps = args.infer_steps if args.infer_steps is not None else (2 if tiny else 50)
    args.infer_reps = args.infer_reps if args.infer_reps is not None else (1 if tiny else 3)
    device = torch.device(args.device or ("cpu" if tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; use --tiny (CPU smoke run) or run on a GPU", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp = device.type == "cuda" and not args.fp32
    load_extension()

    with contextlib.ExitStack() as stack:
        folder = args.model_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="z1g_bench_"))
        os.makedirs(folder, exist_ok=True)
        if args.model_dir and os.path.isfile(os.path.join(folder, "image_encoder", "config.json")):
            setup = {"build_s": 0.0, "save_s": 0.0, "reused_model_dir": folder}  # an earlier run's random models
        else:
            setup = write_base_model(folder, tiny, device)
        t0 = time.perf_counter()
        system, cfg = build_system(folder, tiny, args.batch)
        system.to(device)
        sync(device)
        setup["load_and_grow_s"] = time.perf_counter() - t0
        lc = loader_check(system, folder, tiny)
        train = guarded(lambda: bench_train(system, cfg.data, device, args, amp), device,
                        f"{cfg.data.batch_size} objects per step (try --batch 8)")
        infer = guarded(lambda: bench_inference(system, device, args, amp), device, "one object")

    res = {"tiny": tiny, "compile": bool(args.compile), "compile_mode": args.compile_mode if args.compile else None,
           "compile_backend": args.compile_backend if args.compile else None, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "setup": setup, "loader_check": lc, "train_step": train, "inference": infer}
    print_table(res)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json}")
    return 0 if lc["ok"] and "error" not in train and "error" not in infer else 1


if __name__ == "__main__":
    sys.exit(main())
