#!/usr/bin/env python
"""Benchmark the MobileGen3D / MobileR2L NeLF student: time per frame and, with a checkpoint, PSNR vs its teacher.

One frame = c2w -> sampler -> embedder -> student -> RGB at the shipped size (default: the MobileR2L architecture,
a 64x64 ray grid -> 512x512). Backends, each timed as the median of ``--reps`` frames after ``--warmup`` frames:

* ``onnxruntime`` CPU on ``nelf_full.onnx`` (the one-graph export) with 1 thread and with every core;
* PyTorch float32 on the CPU (the same graph, eval mode, BatchNorm folded into the convolutions as in the export);
* PyTorch on CUDA when available: the student in float16 (the sampler and encoder in float32) eagerly and replayed
  from a CUDA graph (``FrameRenderer``), and float32; timed with CUDA events.

Without ``--ckpt`` the student has random weights (timing only) and a camera for ``--size``. With ``--ckpt`` (a
``nelf-student-system`` checkpoint) and ``--pseudo`` (its pseudo-data folder) it also reports the PSNR against the
teacher's held-out views (PyTorch float32, onnxruntime, CUDA float16). Prints a table; ``--json`` writes it all.

    python scripts/bench/bench_nelf.py --json nelf.json
    python scripts/bench/bench_nelf.py --ckpt outputs/nelf-student/<trial>/ckpts/last.ckpt --pseudo /path/to/pseudo
    python scripts/bench/bench_nelf.py --small --reps 3        # a smoke run of the script
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import torch

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, REPO)


def load_ext() -> Any:
    from threestudio.utils.extensions import import_extension

    import_extension(os.path.join(REPO, "custom", "mobilegen3d"), namespace="custom")
    import custom.mobilegen3d as mg

    return mg


def cpu_median_ms(fn: Callable[[], Any], reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - t0))
    return statistics.median(times)


def cuda_median_ms(fn: Callable[[], Any], reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def build_student(args: argparse.Namespace) -> Any:
    from custom.mobilegen3d.export import load_student_from_checkpoint
    from custom.mobilegen3d.nelf import NeLFConfig, NeLFStudent
    from threestudio.utils.config import parse_structured

    if args.ckpt:
        return load_student_from_checkpoint(args.ckpt)
    over = {"width": 32, "n_blocks": 2, "sr_channels": [16, 16, 8], "sr_res_blocks": 1} if args.small else {}
    student = NeLFStudent(parse_structured(NeLFConfig, over)).eval()
    s = student.upsample
    lw = args.size // s
    lh = max(1, round(lw / args.aspect))
    f = 1.1 * lw  # ~50 degrees horizontal field of view
    student.set_camera(lh, lw, [f, f, lw / 2, lh / 2], 0.5, 5.0)
    return student


def frame_c2w(student: Any, n: int = 1) -> torch.Tensor:
    from custom.mobilegen3d.export import example_inputs

    return example_inputs(student, "full", batch=n)["c2w"]


def bench_onnxruntime(path: str, c2w: torch.Tensor, threads: int, reps: int, warmup: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {"c2w": c2w.numpy()}
    return cpu_median_ms(lambda: sess.run(None, feed), reps, warmup)


def cuda_fp16_renderer(student: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    import copy

    from custom.mobilegen3d.nelf import fold_batchnorm

    net = fold_batchnorm(student).cuda().eval()
    sampler, embedder = net.sampler(), net.embedder()
    half = copy.deepcopy(net).half()

    def render(c2w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return half(embedder(sampler(c2w)).half()).permute(0, 2, 3, 1).float()

    return render


def bench_teacher(source: str, student: Any, c2w: torch.Tensor, reps: int, warmup: int) -> Dict[str, Any]:
    """The teacher's frame time at the student's output size and camera (CUDA events on a GPU, else wall time)."""
    from custom.mobilegen3d.teacher import load_teacher, render

    system, _, cfg = load_teacher(source)
    cam = student.camera_info()
    intr, h, w = tuple(cam["intrinsics"]), cam["height"], cam["width"]
    pose = c2w[0]

    def frame() -> torch.Tensor:
        return render(system, pose, intr, h, w)[0]

    if torch.cuda.is_available():
        ms = cuda_median_ms(frame, reps, warmup)
        where = torch.cuda.get_device_name()
    else:
        ms = cpu_median_ms(frame, reps, warmup)
        where = f"cpu, {torch.get_num_threads()} threads"
    return {"backend": f"teacher ({cfg.system_type})", "device": where, "ms": ms}


def psnr_vs_teacher(student: Any, folder: str, n_views: int, onnx_full: Optional[str]) -> Dict[str, Any]:
    from custom.mobilegen3d.data import even_subset
    from custom.mobilegen3d.pseudo_data import PseudoData

    data = PseudoData(folder)
    views = data.holdout or data.train_indices
    views = [views[i] for i in even_subset(len(views), n_views)]
    out: Dict[str, Any] = {"views": views, "held_out": bool(data.holdout)}
    cam = student.camera_info()
    if (cam["height"], cam["width"]) != (data.height, data.width):
        raise SystemExit(f"the checkpoint renders {cam['width']}x{cam['height']}, the pseudo data is "
                         f"{data.width}x{data.height}")

    def score(render: Callable[[torch.Tensor], torch.Tensor]) -> float:
        vals = []
        for i in views:
            pred = render(data.c2w([i])).float().cpu()[0].clamp(0, 1)
            mse = float(((pred - data.rgb(i)) ** 2).mean())
            vals.append(-10.0 * torch.log10(torch.tensor(max(mse, 1e-12))).item())
        return sum(vals) / len(vals)

    with torch.no_grad():
        out["torch_fp32_cpu"] = score(lambda c: student.render(c))
    if onnx_full:
        import onnxruntime as ort

        sess = ort.InferenceSession(onnx_full, providers=["CPUExecutionProvider"])
        out["onnxruntime_cpu"] = score(lambda c: torch.from_numpy(sess.run(None, {"c2w": c.numpy()})[0]))
    if torch.cuda.is_available():
        render = cuda_fp16_renderer(student)
        out["torch_fp16_cuda"] = score(lambda c: render(c.cuda()))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512, help="output width in pixels (the long side)")
    p.add_argument("--aspect", type=float, default=1.0, help="width / height")
    p.add_argument("--ckpt", default=None, help="a nelf-student-system checkpoint (default: random weights)")
    p.add_argument("--pseudo", default=None, help="its pseudo-data folder, for PSNR vs the teacher")
    p.add_argument("--teacher", default=None,
                   help="the teacher's trial (or checkpoint): time its frame at the student's size in the same run")
    p.add_argument("--n-views", type=int, default=8, help="held-out views for the PSNR (0: all)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--opset", type=int, default=20)
    p.add_argument("--skip", default="", help="comma-separated backends to skip: ort1,ortall,torchcpu,cuda")
    p.add_argument("--small", action="store_true", help="a tiny student (a smoke run of the script)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    load_ext()
    from custom.mobilegen3d.export import export_onnx
    from custom.mobilegen3d.nelf import count_parameters, fold_batchnorm, student_macs

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    student = build_student(args).float().cpu().eval()
    cam = student.camera_info()
    c2w = frame_c2w(student)
    report: Dict[str, Any] = {
        "size": [cam["width"], cam["height"]], "rays": [cam["lr_width"], cam["lr_height"]],
        "n_parameters": count_parameters(student),
        "gmacs_per_frame": student_macs(student.cfg, cam["lr_height"], cam["lr_width"]) / 1e9,
        "checkpoint": args.ckpt, "torch": torch.__version__, "cpu_threads": os.cpu_count(), "results": [],
    }
    rows: List[Dict[str, Any]] = report["results"]
    with tempfile.TemporaryDirectory() as tmp:
        files = export_onnx(student, tmp, opset=args.opset, parts=["student", "full"], verify=False)
        report["onnx_bytes"] = {k: os.path.getsize(v) for k, v in files.items() if v.endswith(".onnx")}
        try:
            import onnxruntime as ort

            report["onnxruntime"] = ort.__version__
            for name, threads in (("ort1", 1), ("ortall", os.cpu_count() or 1)):
                if name not in skip:
                    ms = bench_onnxruntime(files["full"], c2w, threads, args.reps, args.warmup)
                    rows.append({"backend": "onnxruntime cpu fp32", "threads": threads, "ms": ms})
        except ImportError:
            print("onnxruntime is not installed: skipping its rows (pip install onnxruntime)")
        if "torchcpu" not in skip:
            pipe = fold_batchnorm(student).pipeline().eval()
            with torch.no_grad():
                ms = cpu_median_ms(lambda: pipe(c2w), args.reps, args.warmup)
            rows.append({"backend": "pytorch cpu fp32", "threads": torch.get_num_threads(), "ms": ms})
        if torch.cuda.is_available() and "cuda" not in skip:
            render16 = cuda_fp16_renderer(student)
            c2w_gpu = c2w.cuda()
            rows.append({"backend": "pytorch cuda fp16", "device": torch.cuda.get_device_name(),
                         "ms": cuda_median_ms(lambda: render16(c2w_gpu), args.reps * 5, args.warmup * 5)})
            from custom.mobilegen3d.nelf import FrameRenderer

            graphed = FrameRenderer(student.cuda(), torch.float16, batch=1, cuda_graph=True)
            rows.append({"backend": "pytorch cuda fp16, CUDA graph", "device": torch.cuda.get_device_name(),
                         "ms": cuda_median_ms(lambda: graphed(c2w_gpu), args.reps * 5, args.warmup * 5)})
            del graphed
            student = student.cpu()
            pipe32 = fold_batchnorm(student).cuda().pipeline().eval()
            with torch.no_grad():
                rows.append({"backend": "pytorch cuda fp32", "device": torch.cuda.get_device_name(),
                             "ms": cuda_median_ms(lambda: pipe32(c2w_gpu), args.reps * 5, args.warmup * 5)})
            student = student.cpu()
        if args.teacher:
            rows.append(bench_teacher(args.teacher, student, c2w, args.reps, args.warmup))
        if args.ckpt and args.pseudo:
            report["psnr_vs_teacher"] = psnr_vs_teacher(student, args.pseudo, args.n_views, files["full"])
    for r in rows:
        r["fps"] = 1000.0 / r["ms"]
    print(f"NeLF student {cam['width']}x{cam['height']} from {cam['lr_width']}x{cam['lr_height']} rays: "
          f"{report['n_parameters'] / 1e6:.2f} M parameters, {report['gmacs_per_frame']:.2f} GMACs/frame, "
          f"ONNX {report['onnx_bytes'].get('full', 0) / 2**20:.2f} MiB (nelf_full.onnx)")
    print(f"{'backend':<24} {'threads/device':<24} {'ms/frame':>10} {'fps':>8}")
    for r in rows:
        where = str(r.get("threads", r.get("device", "")))
        print(f"{r['backend']:<24} {where:<24} {r['ms']:>10.2f} {r['fps']:>8.1f}")
    if "psnr_vs_teacher" in report:
        ps = report["psnr_vs_teacher"]
        print(f"PSNR vs the teacher ({len(ps['views'])} {'held-out' if ps['held_out'] else 'training'} views): "
              + ", ".join(f"{k} {v:.2f} dB" for k, v in ps.items() if isinstance(v, float)))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
