"""Train nerfstudio's ``nerfacto`` or ``splatfacto`` on a capture and record held-out PSNR against training time.

The reference rows for ``bench_capture.py --nerfstudio-results``: the same capture, the same split (every 8th frame
of the file's frame order held out) and the same downscale as our capture recipes, trained with nerfstudio's own
method configs, dataparser, pipeline, optimizers and training step, without the CLI, the viewer or any logger.

    python scripts/bench/nerfstudio_capture.py --data ../shared/data/fox --method splatfacto --downscale 4 \\
        --seconds 180 --eval-every-seconds 20 --out ns_splatfacto.json

Written for nerfstudio 1.1.5 (``nerfacto`` needs no CUDA: ``--device cpu`` runs it, slowly). What differs from
``ns-train METHOD --data DIR nerfstudio-data --downscale-factor N --eval-mode interval``:

* The downscaled images are written once to a scratch copy (``--scratch``, default ``/tmp/nerfstudio_capture``),
  box-averaged with PIL (as our loader's area averaging) and stored as PNG (no second JPEG loss); the input folder
  is never written to. ``transforms.json`` there is the input's with ``file_path`` renamed to the PNGs.
* Training stops after ``--seconds`` of training time (or ``--max-steps``); the method's schedules keep their
  defaults (30k steps), as in a time-limited ``ns-train`` run. Training time excludes setup (dataparsing, image
  caching, the data worker's start-up), gsplat's one-time CUDA build, the warm-up of ``torch.compile`` and all
  evaluation (CUDA is synchronized around each evaluation). nerfstudio's in-loop evaluations, logging and
  checkpoints are not run.
* Evaluation renders every held-out image with the model (``get_outputs_for_camera``, as
  ``get_average_eval_image_metrics``), takes the ground truth as the model's ``get_image_metrics_and_images``
  prepares it (splatfacto compares undistorted, cropped images; nerfacto renders the distorted camera), and
  reports the mean PSNR computed here (``-10 log10 MSE`` per image, then the mean) and nerfstudio's SSIM. LPIPS is
  not computed: torchmetrics' LPIPS downloads AlexNet weights when a model is built, so its class is replaced by a
  stub returning NaN.
* The trainer's imports of the viewer are stubbed, and so are modules that only the viewer, other dataparsers,
  ``process_data`` or splatfacto's (disabled) bilateral grid import (viser, rawpy, pyquaternion, nuscenes, tensorly)
  when they are not installed; scikit-learn's ``NearestNeighbors`` (splatfacto's initial scales) falls back to an
  exact SciPy k-d tree. So ``pip install --no-deps nerfstudio==1.1.5`` needs only: tyro 0.9.2 (docstring-parser,
  shtab, typeguard), appdirs, pathos (multiprocess, dill, ppft, pox), nerfacc 0.5.2, pytorch-msssim, fpsample and,
  for splatfacto, gsplat 1.4.0 (its pin: 1.5.3 is API-compatible but its DefaultStrategy never resets opacities),
  beside torch, torchvision, torchmetrics, tensorboard, opencv, matplotlib, scipy, pillow, rich, jaxtyping, pyyaml.
* nerfacto's hash grid and MLPs use tiny-cuda-nn when it is importable, else nerfstudio's PyTorch implementation
  (``--implementation``); the JSON says which.

Output (``--out``): ``{"method": "nerfstudio-<method>", "curve": [[step, train_seconds, psnr], ...], "psnr",
"ssim", "train_time_s", "steps", ...}``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import math
import os
import random
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

# --------------------------------------------------------------------------------------------------------------
# Import shims. Installed when this file is imported, so that the data worker that nerfacto's ParallelDataManager
# spawns (which re-imports this file as __mp_main__) gets them too.
# --------------------------------------------------------------------------------------------------------------

# Always stubbed: the viewer is never started (vis="none"), but the trainer imports it unconditionally.
_ALWAYS_STUB = ("nerfstudio.viewer.viewer", "nerfstudio.viewer_legacy.server.viewer_state")
# Stubbed only when not installed: imported at module level by the viewer, by other dataparsers (nuScenes), by
# process_data (raw photos) and by splatfacto's optional bilateral grid (tensorly, off by default).
_STUB_IF_MISSING = ("viser", "rawpy", "newrawpy", "pyquaternion", "nuscenes", "tensorly")


class _StubMeta(type):
    def __getattr__(cls, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _placeholder(f"{cls.__qualname__}.{attr}")


def _placeholder(name: str) -> type:
    def _fail(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError(f"{name} is not available: nerfstudio_capture.py stubs this module (not needed to train)")

    return _StubMeta(name.rsplit(".", 1)[-1], (), {"__init__": _fail, "__qualname__": name})


class _StubModule(types.ModuleType):
    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _placeholder(f"{self.__name__}.{attr}")


class _NearestNeighbors:
    """``sklearn.neighbors.NearestNeighbors`` (Euclidean, exact) on SciPy's k-d tree, for splatfacto's init."""

    def __init__(self, n_neighbors: int = 5, algorithm: str = "auto", metric: str = "euclidean", **_: Any):
        if metric not in ("euclidean", "minkowski"):
            raise ValueError(f"NearestNeighbors stub: unsupported metric {metric!r}")
        self.n_neighbors = n_neighbors

    def fit(self, x: Any) -> "_NearestNeighbors":
        from scipy.spatial import cKDTree

        self._tree = cKDTree(x)
        return self

    def kneighbors(self, x: Any = None, n_neighbors: Optional[int] = None, return_distance: bool = True) -> Any:
        x = self._tree.data if x is None else x
        dist, idx = self._tree.query(x, k=n_neighbors or self.n_neighbors, workers=-1)
        return (dist, idx) if return_distance else idx


class _ShimFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, names: List[str]):
        self.names = set(names)

    def _stubbed(self, fullname: str) -> bool:
        return fullname in self.names or fullname.split(".")[0] in self.names

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if self._stubbed(fullname):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = _StubModule(spec.name)
        module.__path__ = []  # a package, so that submodules (viser.transforms) resolve to stubs too
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ == "tensorly":
            module.set_backend = lambda *_a, **_k: None  # lib_bilagrid calls tl.set_backend("pytorch") at import
        if module.__name__ == "sklearn.neighbors":
            module.NearestNeighbors = _NearestNeighbors


def install_import_shims() -> List[str]:
    """Put the stubs in front of the import system; returns the names stubbed."""
    if any(isinstance(f, _ShimFinder) for f in sys.meta_path):
        return sorted(next(f for f in sys.meta_path if isinstance(f, _ShimFinder)).names)
    names = list(_ALWAYS_STUB) + [n for n in _STUB_IF_MISSING if importlib.util.find_spec(n) is None]
    if importlib.util.find_spec("sklearn") is None:
        names += ["sklearn", "sklearn.neighbors"]
    sys.meta_path.insert(0, _ShimFinder(names))
    return sorted(names)


STUBBED = install_import_shims()
T_START = time.time()


def disable_lpips() -> None:
    """torchmetrics' LPIPS fetches torchvision's AlexNet weights when nerfacto/splatfacto build their metrics."""
    import torch
    import torchmetrics.image.lpip as lpip

    class _NoLPIPS(torch.nn.Module):
        def __init__(self, *_args: Any, **_kwargs: Any):
            super().__init__()

        def forward(self, *_args: Any, **_kwargs: Any) -> torch.Tensor:
            return torch.tensor(float("nan"))

    lpip.LearnedPerceptualImagePatchSimilarity = _NoLPIPS  # type: ignore[misc,assignment]


# --------------------------------------------------------------------------------------------------------------
# Data: the downscaled scratch copy and the split check
# --------------------------------------------------------------------------------------------------------------


def prepare_scratch(data: Path, downscale: int, scratch_root: Path) -> Path:
    """A folder nerfstudio's dataparser reads at ``downscale_factor=downscale``: ``transforms.json`` (file paths
    renamed to PNG) and ``images_<downscale>/`` (box-averaged copies, ``floor(w / d) x floor(h / d)`` as
    nerfstudio's cameras). Built once per input file content and downscale; the input folder is only read."""
    from PIL import Image

    meta_path = data / "transforms.json" if data.is_dir() else data
    src = meta_path.parent
    meta = json.loads(meta_path.read_text())
    if downscale == 1:
        return src
    key = hashlib.sha1(meta_path.read_bytes() + f"/{downscale}/1".encode()).hexdigest()[:12]
    out = scratch_root / f"{src.name}_ds{downscale}_{key}"
    if (out / ".complete").exists():
        return out
    img_dir = out / f"images_{downscale}"
    img_dir.mkdir(parents=True, exist_ok=True)
    for frame in meta["frames"]:
        for k in ("mask_path", "depth_file_path"):
            if k in frame:
                raise SystemExit(f"{meta_path}: frames with {k} are not supported by this driver")
        rel = Path(frame["file_path"])
        with Image.open(src / rel) as im:
            im.load()
            if im.mode not in ("RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            w2, h2 = im.width // downscale, im.height // downscale
            if im.width % downscale == 0 and im.height % downscale == 0:
                small = im.reduce(downscale)  # exact box average over d x d blocks
            else:
                small = im.resize((w2, h2), Image.BOX, box=(0, 0, w2 * downscale, h2 * downscale))
        name = rel.stem + ".png"
        small.save(img_dir / name)
        frame["file_path"] = str(rel.parent / name)
    if "ply_file_path" in meta:  # a sparse point cloud (splatfacto's init); nerfstudio reads it from data_dir
        ply = (src / meta["ply_file_path"]).resolve()
        meta["ply_file_path"] = str(ply)
    (out / "transforms.json").write_text(json.dumps(meta, indent=2))
    (out / ".complete").write_text(str(meta_path.resolve()))
    return out


def file_order_heldout(data: Path, interval: int) -> List[str]:
    """Stems of the frames our recipes hold out: indices 0, interval, 2*interval, ... in the file's frame order."""
    meta_path = data / "transforms.json" if data.is_dir() else data
    frames = json.loads(meta_path.read_text())["frames"]
    return [Path(f["file_path"]).stem for i, f in enumerate(frames) if i % interval == 0]


# --------------------------------------------------------------------------------------------------------------
# nerfstudio setup, training and evaluation
# --------------------------------------------------------------------------------------------------------------


def build_config(method: str, data: Path, downscale: int, eval_interval: int, out_dir: Path, device: str,
                 max_steps: Optional[int], implementation: str) -> Any:
    from nerfstudio.configs.method_configs import method_configs

    config = method_configs[method]
    config.data = data  # ns-train's --data alias
    config.pipeline.datamanager.data = data
    dp = config.pipeline.datamanager.dataparser
    dp.data = data
    dp.downscale_factor = downscale
    dp.eval_mode = "interval"
    dp.eval_interval = eval_interval
    config.vis = "none"  # no viewer, wandb, tensorboard or comet writer
    config.logging.local_writer.enable = False
    config.logging.profiler = "none"
    config.machine.device_type = device
    config.output_dir = out_dir
    config.experiment_name = data.name
    if max_steps is not None:
        config.max_num_iterations = max_steps
    if method == "nerfacto":
        config.pipeline.model.implementation = implementation
    return config


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def wait_for_data(trainer: Any, timeout: float = 300.0) -> None:
    """Finish the data pipeline's start-up before the clock starts: splatfacto's image cache (and undistortion),
    or the first batch of nerfacto's data worker."""
    dm = trainer.pipeline.datamanager
    if hasattr(dm, "cached_train"):
        _ = dm.cached_train, dm.cached_eval
    queue = getattr(dm, "data_queue", None)
    if queue is not None:
        t0 = time.time()
        while queue.empty():
            if time.time() - t0 > timeout:
                raise RuntimeError("nerfstudio's data worker produced no batch")
            time.sleep(0.05)


def warm_up_kernels(method: str, device: str) -> Optional[str]:
    """One-time builds that should not count as training: gsplat's CUDA extension (JIT-compiled on first use) and
    the torch.compile of splatfacto's ``get_viewmat``. Returns gsplat's version."""
    if method != "splatfacto":
        return None
    import gsplat
    import torch

    from gsplat.cuda._backend import _C

    if _C is None:
        raise RuntimeError("gsplat's CUDA extension did not build (see the messages above)")
    from nerfstudio.models.splatfacto import get_viewmat

    get_viewmat(torch.eye(4, device=device)[None, :3, :4].contiguous())
    _sync(device)
    return gsplat.__version__


def evaluate(trainer: Any) -> Dict[str, Any]:
    """All held-out images: mean PSNR (computed here) and nerfstudio's PSNR/SSIM, as get_average_eval_image_metrics."""
    import torch

    pipeline = trainer.pipeline
    model = pipeline.model
    pipeline.eval()
    psnrs: List[float] = []
    ns_psnrs: List[float] = []
    ssims: List[float] = []
    with torch.no_grad():
        for camera, batch in pipeline.datamanager.fixed_indices_eval_dataloader:
            outputs = model.get_outputs_for_camera(camera=camera)
            metrics, images = model.get_image_metrics_and_images(outputs, batch)
            combined = images["img"].float()  # [H, 2W, 3]: ground truth | rendering, as the model compares them
            w = combined.shape[1] // 2
            gt, pred = combined[:, :w], combined[:, w:]
            mse = torch.mean((gt - pred) ** 2).item()
            psnrs.append(float("inf") if mse == 0 else -10.0 * math.log10(mse))
            ns_psnrs.append(float(metrics["psnr"]))
            ssims.append(float(metrics["ssim"]))
    pipeline.train()
    n = len(psnrs)
    return {"psnr": sum(psnrs) / n, "psnr_nerfstudio": sum(ns_psnrs) / n, "ssim": sum(ssims) / n,
            "psnr_per_image": psnrs, "num_images": n}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import numpy as np
    import torch

    disable_lpips()
    import nerfstudio
    from nerfstudio.engine.callbacks import TrainingCallbackLocation

    try:
        from importlib.metadata import version

        ns_version = version("nerfstudio")
    except Exception:  # noqa: BLE001
        ns_version = getattr(nerfstudio, "__version__", "unknown")

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    implementation = args.implementation
    if implementation == "auto":
        implementation = "tcnn" if importlib.util.find_spec("tinycudann") is not None else "torch"
    data = prepare_scratch(Path(args.data).resolve(), args.downscale, Path(args.scratch))
    out_dir = Path(args.output_dir or os.path.join(args.scratch, "runs"))

    torch.backends.cudnn.benchmark = True  # as ns-train
    config = build_config(args.method, data, args.downscale, args.eval_interval, out_dir, device, args.max_steps,
                          implementation)
    config.set_timestamp()
    config.save_config()
    seed = config.machine.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    t_setup = time.time()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    gsplat_version = warm_up_kernels(args.method, device)
    wait_for_data(trainer)
    setup_s = time.time() - t_setup

    # the split: nerfstudio sorts the frames by file name before taking every eval_interval-th one
    dm = trainer.pipeline.datamanager
    ns_heldout = [Path(p).stem for p in dm.eval_dataset._dataparser_outputs.image_filenames]
    ours = file_order_heldout(Path(args.data).resolve(), args.eval_interval)
    if ns_heldout != ours:
        msg = f"held-out frames differ: nerfstudio {ns_heldout} vs file order {ours}"
        if not args.allow_split_mismatch:
            raise SystemExit(msg)
        print("WARNING:", msg, flush=True)
    print(f"held-out ({len(ns_heldout)}): {' '.join(ns_heldout)}; train: {len(dm.train_dataset)}", flush=True)

    callbacks = trainer.callbacks
    before, after = TrainingCallbackLocation.BEFORE_TRAIN_ITERATION, TrainingCallbackLocation.AFTER_TRAIN_ITERATION
    max_steps = config.max_num_iterations
    curve: List[List[float]] = []
    curve_ssim: List[List[float]] = []
    last_eval: Dict[str, Any] = {}
    train_s, eval_s, last_eval_s = 0.0, 0.0, 0.0
    next_eval_t = args.eval_every_seconds if args.eval_every_seconds > 0 else float("inf")
    steps_done = 0
    loss_val = float("nan")
    stopped_by = "max_steps"

    def snapshot(partial: bool) -> Dict[str, Any]:
        res: Dict[str, Any] = {
            "method": f"nerfstudio-{args.method}",
            "curve": curve,
            "psnr": last_eval.get("psnr"),
            "psnr_nerfstudio": last_eval.get("psnr_nerfstudio"),
            "ssim": last_eval.get("ssim"),
            "psnr_per_image": last_eval.get("psnr_per_image"),
            "curve_ssim": curve_ssim,
            "train_time_s": round(train_s, 3),
            "steps": steps_done,
            "stopped_by": None if partial else stopped_by,
            "partial": partial,
            "eval_time_s": round(eval_s, 3),
            "setup_s": round(setup_s, 3),
            "wall_s": round(time.time() - T_START, 3),
            "final_loss": loss_val,
            "heldout": ns_heldout,
            "num_train": len(dm.train_dataset),
            "image_size": [int(dm.train_dataset.cameras.width[0]), int(dm.train_dataset.cameras.height[0])],
            "downscale": args.downscale,
            "seconds_limit": args.seconds,
            "max_steps": max_steps,
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
            "nerfstudio": ns_version,
            "torch": torch.__version__,
            "gsplat": gsplat_version,
            "implementation": implementation if args.method == "nerfacto" else None,
            "mixed_precision": bool(trainer.mixed_precision),
            "stubbed_modules": STUBBED,
            "data": str(data),
        }
        if args.method == "splatfacto":
            res["num_gaussians"] = int(trainer.pipeline.model.num_points)
        if device.startswith("cuda"):
            res["max_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        return res

    def do_eval() -> None:
        nonlocal eval_s, last_eval, last_eval_s
        te = time.time()
        last_eval = evaluate(trainer)
        _sync(device)
        last_eval_s = time.time() - te
        eval_s += last_eval_s
        curve.append([steps_done, round(train_s, 3), round(last_eval["psnr"], 4)])
        curve_ssim.append([steps_done, round(train_s, 3), round(last_eval["ssim"], 5)])
        print(f"step {steps_done:6d}  train {train_s:8.1f} s  held-out PSNR {last_eval['psnr']:.3f} dB "
              f"(nerfstudio {last_eval['psnr_nerfstudio']:.3f})  SSIM {last_eval['ssim']:.4f}  loss {loss_val:.4f}"
              f"  [eval {last_eval_s:.1f} s]", flush=True)
        if args.out:  # a partial result survives a run that is killed later
            write_json(args.out, snapshot(partial=True))

    _sync(device)
    t0 = time.perf_counter()
    step = 0
    while step < max_steps:
        trainer.step = step
        trainer.pipeline.train()
        for cb in callbacks:
            cb.run_callback_at_location(step, location=before)
        loss, _loss_dict, _metrics = trainer.train_iteration(step)
        for cb in callbacks:
            cb.run_callback_at_location(step, location=after)
        step += 1
        steps_done = step
        elapsed = train_s + time.perf_counter() - t0  # not synchronized: only decides when to stop or evaluate
        stop = elapsed >= args.seconds or step >= max_steps
        if args.max_wall_seconds and not stop:
            # leave room for the final evaluation (the last one's duration, or a guess before the first)
            reserve = 1.3 * last_eval_s + 5.0 if curve else 60.0
            if time.time() - T_START + reserve >= args.max_wall_seconds:
                stop, stopped_by = True, "max_wall_seconds"
        elif stop:
            stopped_by = "seconds" if elapsed >= args.seconds else "max_steps"
        due = elapsed >= next_eval_t or (args.eval_every_steps > 0 and step % args.eval_every_steps == 0)
        if stop or due:
            _sync(device)
            train_s += time.perf_counter() - t0
            loss_val = float(loss.detach())
            if not math.isfinite(loss_val):
                raise RuntimeError(f"loss is {loss_val} at step {step}")
            do_eval()
            while next_eval_t <= train_s:
                next_eval_t += args.eval_every_seconds
            if stop:
                break
            _sync(device)
            t0 = time.perf_counter()

    return snapshot(partial=False)


def write_json(path: str, obj: Dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, p)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a nerfstudio capture folder (transforms.json) or the json file")
    ap.add_argument("--method", required=True, choices=["nerfacto", "splatfacto"])
    ap.add_argument("--downscale", type=int, default=4)
    ap.add_argument("--eval-interval", type=int, default=8, help="hold out every N-th frame (from the first)")
    ap.add_argument("--seconds", type=float, default=180.0, help="training time (evaluation excluded)")
    ap.add_argument("--max-steps", type=int, default=None, help="default: the method's (30000)")
    ap.add_argument("--eval-every-seconds", type=float, default=20.0, help="of training time; 0: only at the end")
    ap.add_argument("--eval-every-steps", type=int, default=0, help="also evaluate every N steps (0: off)")
    ap.add_argument("--max-wall-seconds", type=float, default=None,
                    help="stop training early so that the whole run, final evaluation included, ends within this "
                         "wall time (for a time-limited machine); the JSON's stopped_by says why training ended")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--implementation", default="auto", choices=["auto", "tcnn", "torch"],
                    help="nerfacto's field: tiny-cuda-nn or nerfstudio's PyTorch version (auto: tcnn if importable)")
    ap.add_argument("--scratch", default="/tmp/nerfstudio_capture", help="downscaled copies and run folders")
    ap.add_argument("--output-dir", default=None, help="nerfstudio's output folder (default: SCRATCH/runs)")
    ap.add_argument("--allow-split-mismatch", action="store_true",
                    help="run even if nerfstudio's name-sorted split differs from the file-order split")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
    warnings.filterwarnings("ignore", category=FutureWarning)
    result = run(args)
    if args.out:
        write_json(args.out, result)
    print(f"{result['method']}: PSNR {result['psnr']:.3f} dB, SSIM {result['ssim']:.4f} after "
          f"{result['train_time_s']:.1f} s of training ({result['steps']} steps); wall {result['wall_s']:.0f} s",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
