"""ONNX export of a trained NeLF student (for onnxruntime, mobile runtimes, or a Lens-style three-part graph).

``export_onnx(student, out_dir)`` writes

* ``student.onnx``: ``input`` [B, C_in, h, w] (the encoded rays) -> ``output`` [B, 3, H, W] (RGB in (0, 1));
* ``sampler.onnx``: ``c2w`` [B, 4, 4] -> ``points`` [B, h, w, n_samples, 3] (fixed intrinsics, depths);
* ``embedder.onnx``: ``points`` -> ``input`` (points / scale, positional encoding);
* ``nelf_full.onnx``: ``c2w`` [B, 4, 4] -> ``rgb`` [B, H, W, 3], the three in one graph;
* ``intrinsics.json``: sizes, intrinsics, near/far, n_samples, multires, scale, tensor names, and (``verify``) the
  largest difference between onnxruntime and PyTorch for each file.

The batch axis is dynamic. BatchNorm is folded into the convolutions (the student is exported in eval mode).
Opset 20 (the default) has GELU as a standard ONNX operator (``Gelu``); with an older opset (>= 17) the exporter
writes it as ``Erf`` arithmetic. No custom operators. ``onnx`` and ``onnxruntime`` are imported only here, when
asked for.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from typing import Any, Dict, Optional, Sequence

import torch

from threestudio.utils.imports import MissingDependencyError

from .nelf import NeLFStudent, count_parameters

PARTS = ("student", "sampler", "embedder", "full")
FILES = {"student": "student.onnx", "sampler": "sampler.onnx", "embedder": "embedder.onnx",
         "full": "nelf_full.onnx"}
DEFAULT_OPSET = 20
MIN_OPSET = 17


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"ONNX export of the NeLF student needs the packages 'onnx' and 'onnxruntime' ('{module}' could not be "
            f"imported: {e}). Install them with `pip install onnx onnxruntime`.") from e


def _graphs(student: NeLFStudent) -> Dict[str, Any]:
    """part -> (module, example inputs, input names, output names)."""
    cam = student.camera_info()
    dev = student.camera.device
    c2w = torch.eye(4, device=dev)[None]
    c2w[0, :3, 3] = torch.tensor([0.0, 0.0, 0.5 * (cam["near"] + cam["far"])], device=dev)
    sampler, embedder = student.sampler().eval(), student.embedder().eval()
    with torch.no_grad():
        pts = sampler(c2w)
        x = embedder(pts)
    return {
        "student": (student, (x,), ["input"], ["output"]),
        "sampler": (sampler, (c2w,), ["c2w"], ["points"]),
        "embedder": (embedder, (pts,), ["points"], ["input"]),
        "full": (student.pipeline().eval(), (c2w,), ["c2w"], ["rgb"]),  # eval: the exporter restores this mode
    }


def example_inputs(student: NeLFStudent, part: str, batch: int = 1, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Inputs for one exported part (random poses around the scene for c2w; their points / encodings otherwise)."""
    from threestudio.ops.cameras import look_at

    cam = student.camera_info()
    g = torch.Generator().manual_seed(seed)
    eye = torch.nn.functional.normalize(torch.randn(batch, 3, generator=g), dim=-1) * (0.5 * cam["far"])
    c2w = look_at(eye, torch.zeros(3), up=torch.tensor([0.0, 0.0, 1.0])).to(student.camera.device)
    if part in ("sampler", "full"):
        return {"c2w": c2w}
    with torch.no_grad():
        pts = student.sampler()(c2w)
        return {"points": pts} if part == "embedder" else {"input": student.embedder()(pts)}


def export_onnx(student: NeLFStudent, out_dir: str, opset: int = DEFAULT_OPSET,
                parts: Sequence[str] = PARTS, verify: bool = True, tolerance: float = 1e-4,
                dynamic_batch: bool = True, extra_info: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """Export ``parts`` of a student (with its camera) into ``out_dir``; returns {part or 'intrinsics': path}.

    ``dynamic_batch``: the first axis of every input and output is symbolic ("batch"); otherwise the graphs have
    the static batch 1 (some mobile converters want fully static shapes). All other axes are static.

    ``verify``: run each file in onnxruntime on example inputs and record the largest absolute difference from
    PyTorch in ``intrinsics.json`` (a warning when it exceeds ``tolerance``)."""
    _require("onnx")
    if opset < MIN_OPSET:
        raise ValueError(f"ONNX opset {opset} is too old: use {MIN_OPSET} or newer ({DEFAULT_OPSET} writes GELU as "
                         f"the standard Gelu operator).")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown ONNX part(s) {unknown}: choose from {', '.join(PARTS)}.")
    os.makedirs(out_dir, exist_ok=True)
    # a CPU float32 copy in eval mode: BatchNorm uses (and folds) its running statistics
    model = copy.deepcopy(student).float().cpu().eval()
    graphs = _graphs(model)
    written: Dict[str, str] = {}
    for part in parts:
        module, args, inputs, outputs = graphs[part]
        path = os.path.join(out_dir, FILES[part])
        tmp = path + ".tmp"
        dynamic = {n: {0: "batch"} for n in inputs + outputs} if dynamic_batch else None
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(module, args, tmp, input_names=inputs, output_names=outputs, opset_version=opset,
                              do_constant_folding=True, dynamic_axes=dynamic, dynamo=False)
            ref = module(*args)
        _declare_static_shapes(tmp, [a.shape for a in args], [ref.shape], dynamic_batch)
        os.replace(tmp, path)
        written[part] = path
    info = intrinsics_info(model, opset)
    info["files"] = {p: os.path.basename(v) for p, v in written.items()}
    info["file_bytes"] = {p: os.path.getsize(v) for p, v in written.items()}
    if verify:
        info["max_abs_diff_vs_torch"] = onnx_parity(model, written)
        bad = {k: v for k, v in info["max_abs_diff_vs_torch"].items() if v > tolerance}
        if bad:
            from threestudio.utils.log import warn

            warn(f"ONNX export: onnxruntime differs from PyTorch by more than {tolerance:g}: {bad}")
    if extra_info:
        info.update(extra_info)
    from threestudio.utils.saving import atomic_write_text

    path = os.path.join(out_dir, "intrinsics.json")
    atomic_write_text(path, json.dumps(info, indent=2))
    written["intrinsics"] = path
    return written


def _declare_static_shapes(path: str, in_shapes: Sequence[Any], out_shapes: Sequence[Any],
                           dynamic_batch: bool) -> None:
    """Write the known sizes into the graph's input/output declarations (the TorchScript exporter leaves sizes it
    could not trace as symbols); the batch axis stays symbolic with ``dynamic_batch``."""
    onnx = _require("onnx")
    model = onnx.load(path)
    for values, shapes in ((model.graph.input, in_shapes), (model.graph.output, out_shapes)):
        for value, shape in zip(values, shapes):
            dims = value.type.tensor_type.shape.dim
            for i, (dim, size) in enumerate(zip(dims, shape)):
                if i == 0 and dynamic_batch:
                    dim.dim_param = "batch"
                else:
                    dim.dim_value = int(size)
    onnx.save(model, path)


def intrinsics_info(student: NeLFStudent, opset: int = DEFAULT_OPSET) -> Dict[str, Any]:
    """What a runtime needs besides the graphs (MobileR2L's intrinsics.json keys, and ours)."""
    cam = student.camera_info()
    cfg = student.cfg
    return {
        "H": cam["height"], "W": cam["width"], "h": cam["lr_height"], "w": cam["lr_width"],
        "focal": cam["lr_intrinsics"][0],  # MobileR2L's key: the focal length of the h x w grid
        "intrinsics": cam["intrinsics"], "lr_intrinsics": cam["lr_intrinsics"],
        "near": cam["near"], "far": cam["far"], "n_samples": cfg.n_samples, "multires": cfg.multires,
        "scale": cam["scale"], "upsample": student.upsample, "in_channels": student.in_channels,
        "activation": cfg.activation, "n_parameters": count_parameters(student), "opset": opset,
        "conventions": {
            "c2w": "OpenGL camera-to-world (x right, y up, looking along -z), [B, 4, 4]",
            "rays": "unit directions through pixel centres (+0.5) of the h x w grid; points at distances "
                    "linspace(near, far, n_samples) along them",
            "encoding": "per value v of points/scale (sample-major x, y, z): sin(2^k v) k<multires, cos(2^k v) "
                        "k<multires, v; channels-first image [B, 3*n_samples*(2*multires+1), h, w]",
            "output": "student.onnx: [B, 3, H, W]; nelf_full.onnx: [B, H, W, 3]; RGB in (0, 1)",
        },
    }


def onnx_parity(student: NeLFStudent, files: Dict[str, str], batch: int = 1) -> Dict[str, float]:
    """Largest absolute difference between onnxruntime (CPU) and PyTorch (float32) for each exported part."""
    ort = _require("onnxruntime")
    model = copy.deepcopy(student).float().cpu().eval()
    graphs = _graphs(model)
    out: Dict[str, float] = {}
    for part, path in files.items():
        if part not in graphs:
            continue
        module = graphs[part][0]
        feeds = example_inputs(model, part, batch)
        with torch.no_grad():
            ref = module(*feeds.values()).numpy()
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = sess.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
        out[part] = float(abs(got - ref).max())
    return out


def load_student_from_checkpoint(ckpt: str, map_location: str = "cpu") -> NeLFStudent:
    """A trained student from a ``nelf-student-system`` checkpoint (its trial's ``configs/parsed.yaml`` gives the
    architecture), in eval mode."""
    from omegaconf import OmegaConf

    from threestudio.utils.config import parse_structured
    from threestudio.utils.trials import load_trial_config

    from .nelf import NeLFConfig

    cfg = load_trial_config(ckpt)
    scfg = OmegaConf.to_container(cfg.system.get("student", {}), resolve=True)
    student = NeLFStudent(parse_structured(NeLFConfig, scfg))
    state = torch.load(ckpt, map_location=map_location, weights_only=False)["state_dict"]
    prefix = "student."
    student.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return student.eval()
