"""``multiview``: posed images in the nerfstudio / Blender ``transforms.json`` formats.

Layouts (under ``dataroot``; ``dataroot`` may also name one ``.json`` file):

* **split files** (Blender): ``transforms_train.json``, ``transforms_val.json``, ``transforms_test.json``
  (the names come from ``train_split``/``val_split``/``test_split``). A missing val file falls back to the test
  file and vice versa; with neither, evaluation uses the training views (with a warning).
* **one file** (nerfstudio): ``transforms.json``. Held-out frames come from its ``train_filenames`` /
  ``val_filenames`` / ``test_filenames`` lists if it has them, else every ``test_every``-th frame (0, k, 2k, ...)
  is held out for validation and test and the rest is trained on (``test_every: 0`` trains on all).

Fields read, per frame or at the top of the file (a frame's value wins): ``transform_matrix`` (4x4 or 3x4
camera-to-world, OpenGL convention: x right, y up, looking along -z, as in :mod:`threestudio.ops.cameras`),
``file_path`` (relative to the JSON file's folder; Blender's extension-less paths get ``.png``), ``mask_path``
(optional, white = object), ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h``, or Blender's ``camera_angle_x``
(and optional ``camera_angle_y``); ``cx``/``cy`` default to the image centre, ``fl_y`` to ``fl_x``. Nerfstudio's
``applied_transform`` is checked and reported in :attr:`scene_info` (the frames' poses already include it).
Camera models: ``camera_model`` ``OPENCV`` (and COLMAP's simpler pinhole models) with distortion ``k1..k4, p1, p2``,
or ``OPENCV_FISHEYE`` with ``k1..k4`` (:mod:`threestudio.ops.distortion`). With ``distortion: apply`` (the
default) the ray of every pixel is undistorted numerically, so the photos are used as taken; ``ignore`` treats the
cameras as pinholes (with a warning), ``error`` refuses distorted cameras. The ``multiview-images`` module (whole
images, for rasterizers) resamples distorted photos into pinhole images once instead, and caches them. Extra
top-level fields ``scene_radius`` (and ``scene_center``) describe the object's bounding sphere (our synthetic
scenes write them); nerfstudio's ``ply_file_path`` (a sparse point cloud in the poses' frame) is read for
:attr:`MultiviewDataModule.scene_points`.

Images may be RGB or RGBA (8 or 16 bit). Alpha comes from the image or, when a frame has ``mask_path``, from the
mask (which then wins). Colours are kept premultiplied by alpha (so downscaling by area averaging is exact) and
composited on ``background`` when a batch is made: ``rgb = rgb_straight * alpha + bg * (1 - alpha)``.

World coordinates. By default the poses are used as they are. Optionally the data module maps the file's world
frame to its own by ``x' = R (x - center) * s``, where ``center`` is ``center`` (``recenter: none``), the point
closest to all training cameras' optical axes (``recenter: focus``), or the mean training camera position
(``recenter: cameras``); ``R`` is the identity, or with ``orient: up`` the rotation that takes the training cameras'
mean up vector to +z (nerfstudio's default); and ``s = scene_scale * (camera_radius / mean training camera distance
from center)`` when ``camera_radius`` is set, ``scene_scale / (largest |coordinate| of a training camera)`` when
``camera_extent: true`` (nerfstudio's auto-scale: the cameras fill [-1, 1]^3), else ``scene_scale``. The geometry's
bbox (e.g. ``system.geometry.radius``) is in the new coordinates; :attr:`MultiviewDataModule.scene_info` gives the
mapped ``radius``/``bbox`` of the object when the file states ``scene_radius``, to size it.

Batches.
* train (``batch_size`` random rays, drawn at consumption time with the module's saved generator, uniform over
  all pixels of all training images, like instant-ngp): ``rays_o``, ``rays_d`` [N, 3] (unit), ``rgb`` [N, 3]
  (composited on ``bg_color``), ``mask`` [N, 1] (alpha), ``bg_color`` [N, 3], ``image_index`` [N] (long).
* val / test / predict (one full image each): ``rays_o``, ``rays_d``, ``rgb`` [1, H, W, 3], ``mask`` [1, H, W, 1],
  ``c2w``, ``proj_mtx``, ``mvp_mtx`` [1, 4, 4] (OpenGL projection with the principal point, near 0.01, far 100),
  ``camera_positions``, ``light_positions`` [1, 3], ``fovy`` [1] (degrees, as threestudio's random cameras),
  ``fovy_rad`` [1], ``intrinsics`` [1, 4] (fx, fy, cx, cy in pixels), ``bg_color`` [3], ``height``, ``width``,
  ``index`` (ints).

Memory: all training pixels live in one tensor (premultiplied RGBA, float16) with one unit ray direction (float32)
and one image index (int32) per pixel: 24 bytes a pixel. They move to the training device on the first draw when
``load_to_device`` is true (the default), else stay in CPU memory and each batch is moved. Use ``downscale`` for
large captures.

Editable training images (Instruct-NeRF2NeRF's dataset update; both modules): ``train_views()`` / ``train_view(j)``
(camera, size and current image of each training view), ``replace_train_image(j, rgb)`` (writes the pixels into the
training tensors, on their device), ``original_train_image(j)`` (the photo as loaded) and ``edited_indices()``.
Replacements live in memory only: nothing is written to disk, and a new data module starts from the photos.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import threestudio
from threestudio.data.base import BaseDataModule
from threestudio.data.schema import MultiviewDataModuleConfig
from threestudio.ops.cameras import get_ray_directions, get_rays, mvp_matrix, perspective_projection
from threestudio.utils.log import info, warn

BACKGROUNDS = ("white", "black", "random")
RECENTER = ("none", "focus", "cameras")
DISTORTION = ("apply", "ignore", "error")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")
FISHEYE_MODELS = ("OPENCV_FISHEYE",)
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")


class DatasetError(ValueError):
    """A malformed or missing dataset file; the message names the file and the field."""


# ---------------------------------------------------------------------------------------------------- parsing
@dataclass
class FrameRecord:
    """One frame of a transforms file, validated; intrinsics resolved once the image size is known."""

    json_path: str
    index: int  # position in the file's "frames"
    image_path: str
    mask_path: Optional[str]
    c2w: np.ndarray  # [4, 4] float64, file coordinates
    fields: Dict[str, Any] = field(default_factory=dict)  # intrinsic keys found (frame overrides top level)

    def where(self, key: str = "") -> str:
        return f"{self.json_path}: frames[{self.index}]" + (f".{key}" if key else "")


def _resolve_dataroot(dataroot: str) -> str:
    from threestudio.utils.extensions import REPO_ROOT

    if dataroot in ("", "???"):
        raise DatasetError("data.dataroot is not set: give the folder of a transforms.json dataset, e.g. "
                           "data.dataroot=load/scenes/quickstart.")
    if os.path.isabs(dataroot):
        if os.path.exists(dataroot):
            return dataroot
        raise DatasetError(f"data.dataroot='{dataroot}' does not exist.")
    tried = [os.path.abspath(dataroot), os.path.join(REPO_ROOT, dataroot)]
    for cand in tried:
        if os.path.exists(cand):
            return cand
    raise DatasetError(
        f"data.dataroot='{dataroot}' not found: looked in {tried[0]} (relative to the current directory) and "
        f"{tried[1]} (relative to the repository root). The quick-start scene is made by "
        f"`python scripts/make_synthetic_scene.py --out load/scenes/quickstart`."
    )


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e}).") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: the top level must be a JSON object with a 'frames' list, got "
                           f"{type(data).__name__}.")
    return data


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise DatasetError(f"{where} must be a finite number, got {value!r}.")
    return float(value)


def _matrix(value: Any, where: str, rows: Sequence[int] = (3, 4)) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{where} must be a 4x4 (or 3x4) matrix of numbers, got {value!r:.80}.") from e
    if m.ndim != 2 or m.shape[1] != 4 or m.shape[0] not in rows:
        raise DatasetError(f"{where} must be a 4x4 (or 3x4) matrix, got shape {tuple(m.shape)}.")
    if not np.isfinite(m).all():
        raise DatasetError(f"{where} has non-finite entries.")
    if m.shape[0] == 3:
        m = np.concatenate([m, np.array([[0.0, 0.0, 0.0, 1.0]])], axis=0)
    return m


def _find_image(base_dir: str, rel: Any, where: str) -> str:
    if not isinstance(rel, str) or not rel:
        raise DatasetError(f"{where} must be a non-empty string (a path relative to the JSON file), got {rel!r}.")
    path = rel if os.path.isabs(rel) else os.path.normpath(os.path.join(base_dir, rel))
    if os.path.isfile(path):
        return path
    if not os.path.splitext(path)[1]:
        for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG"):
            if os.path.isfile(path + ext):
                return path + ext
        raise DatasetError(f"{where}: image file not found: {path} (also tried .png/.jpg/.jpeg).")
    raise DatasetError(f"{where}: image file not found: {path}.")


def _parse_frame(json_path: str, i: int, fr: Any, top: Dict[str, Any], base: str, model: Any, distortion: str,
                 warned: List[bool]) -> FrameRecord:
    """One frame of a transforms file, validated (raises DatasetError naming the frame and the field)."""
    where = f"{json_path}: frames[{i}]"
    if not isinstance(fr, dict):
        raise DatasetError(f"{where} must be an object with file_path and transform_matrix, got {fr!r:.80}.")
    for key in ("file_path", "transform_matrix"):
        if key not in fr:
            raise DatasetError(f"{where} has no '{key}'.")
    c2w = _matrix(fr["transform_matrix"], f"{where}.transform_matrix")
    if abs(np.linalg.det(c2w[:3, :3])) < 1e-8:
        raise DatasetError(f"{where}.transform_matrix has a singular rotation part.")
    image = _find_image(base, fr["file_path"], f"{where}.file_path")
    mask = _find_image(base, fr["mask_path"], f"{where}.mask_path") if fr.get("mask_path") else None
    fields: Dict[str, Any] = {}
    for key in INTRINSIC_KEYS + DISTORTION_KEYS:
        src, val = (fr, fr[key]) if key in fr else (top, top.get(key))
        if val is None:
            continue
        loc = f"{where}.{key}" if src is fr else f"{json_path}: {key}"
        fields[key] = _number(val, loc)
    fmodel = str(fr.get("camera_model", model) or "OPENCV").upper()
    if fmodel not in PINHOLE_MODELS + FISHEYE_MODELS:
        raise DatasetError(f"{where}: camera_model '{fmodel}' is not supported (perspective models: "
                           f"{', '.join(PINHOLE_MODELS)}; fisheye: {', '.join(FISHEYE_MODELS)}).")
    fields["model"] = "fisheye" if fmodel in FISHEYE_MODELS else "opencv"
    dist = {k: fields[k] for k in DISTORTION_KEYS if fields.get(k, 0.0) != 0.0}
    if fields["model"] == "fisheye" and any(k in dist for k in ("p1", "p2")):
        raise DatasetError(f"{where}: the OPENCV_FISHEYE model has no tangential terms, but p1/p2 are set.")
    if dist and distortion != "apply":
        msg = (f"{where}: distortion {', '.join(f'{k}={v:g}' for k, v in dist.items())} is not applied (rays "
               f"use the pinhole model)")
        if distortion == "error":
            raise DatasetError(msg + "; set data.distortion=apply to use it.")
        if not warned[0]:
            warn(msg + " because data.distortion=ignore (reported for the first such frame only).")
            warned[0] = True
        for k in DISTORTION_KEYS:
            fields.pop(k, None)
    if fields["model"] == "fisheye" and distortion != "apply":
        raise DatasetError(f"{where}: a fisheye camera (OPENCV_FISHEYE) needs data.distortion=apply.")
    for key in ("w", "h"):
        if key in fields and (fields[key] < 1 or fields[key] != int(fields[key])):
            where_k = f"{where}.{key}" if key in fr else f"{json_path}: {key}"
            raise DatasetError(f"{where_k} must be a positive integer, got {fields[key]!r}.")
    if "fl_x" not in fields and "camera_angle_x" not in fields:
        raise DatasetError(f"{where}: no focal length: give 'fl_x' (pixels) or 'camera_angle_x' (radians), at "
                           f"the top level or in the frame.")
    for key in ("fl_x", "fl_y"):
        if key in fields and fields[key] <= 0:
            where_k = f"{where}.{key}" if key in fr else f"{json_path}: {key}"
            raise DatasetError(f"{where_k} must be a positive focal length in pixels, got {fields[key]:g}.")
    for key in ("camera_angle_x", "camera_angle_y"):
        if key in fields and not 0.0 < fields[key] < math.pi:
            where_k = f"{where}.{key}" if key in fr else f"{json_path}: {key}"
            raise DatasetError(f"{where_k} must be a field of view in radians in (0, pi), got {fields[key]:g}.")
    return FrameRecord(json_path, i, image, mask, c2w, fields)


def parse_transforms(json_path: str, distortion: str = "apply") -> Tuple[Dict[str, Any], List[FrameRecord]]:
    """Read and validate a transforms file. Returns (the top-level fields except 'frames', the frames)."""
    data = _read_json(json_path)
    if "frames" not in data:
        raise DatasetError(f"{json_path}: field 'frames' is missing (a list of {{file_path, transform_matrix}}).")
    frames = data["frames"]
    if not isinstance(frames, list) or not frames:
        raise DatasetError(f"{json_path}: field 'frames' must be a non-empty list, got {frames!r:.80}.")
    top = {k: v for k, v in data.items() if k != "frames"}
    model = top.get("camera_model")
    base = os.path.dirname(os.path.abspath(json_path))
    records: List[FrameRecord] = []
    problems: List[str] = []
    warned: List[bool] = [False]
    for i, fr in enumerate(frames):
        try:
            records.append(_parse_frame(json_path, i, fr, top, base, model, distortion, warned))
        except DatasetError as e:  # report every bad frame at once, not only the first
            problems.append(str(e))
    problems = list(dict.fromkeys(problems))  # a bad top-level field is reported once, not once per frame
    if len(problems) == 1:
        raise DatasetError(problems[0])
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DatasetError(f"{json_path}: {len(problems)} problems in its {len(frames)} frames:\n"
                           + "\n".join(f"  - {p}" for p in problems[:20]) + more)
    if "applied_transform" in top:
        _matrix(top["applied_transform"], f"{json_path}: applied_transform")
    if "scene_radius" in top:
        r = _number(top["scene_radius"], f"{json_path}: scene_radius")
        if r <= 0:
            raise DatasetError(f"{json_path}: scene_radius must be positive, got {r}.")
    if "scene_center" in top:
        sc = top["scene_center"]
        if not (isinstance(sc, list) and len(sc) == 3):
            raise DatasetError(f"{json_path}: scene_center must be a list of 3 numbers, got {sc!r:.80}.")
        for k, v in enumerate(sc):
            _number(v, f"{json_path}: scene_center[{k}]")
    return top, records


# ---------------------------------------------------------------------------------------------------- images
def _load_rgba(path: str, where: str) -> torch.Tensor:
    """[H, W, 4] float in [0, 1] (alpha 1 when the image has none)."""
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
    except Exception as e:  # PIL raises several types
        raise DatasetError(f"{where}: cannot read image {path}: {e}") from e
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float32) / 65535.0
        rgba = np.concatenate([np.repeat(a[..., None], 3, -1), np.ones_like(a[..., None])], -1)
        return torch.from_numpy(rgba)
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    img = img.convert("RGBA" if has_alpha else "RGB")
    a = np.asarray(img, dtype=np.float32) / 255.0
    if a.shape[-1] == 3:
        a = np.concatenate([a, np.ones_like(a[..., :1])], -1)
    return torch.from_numpy(np.ascontiguousarray(a))


def _load_mask(path: str, where: str) -> torch.Tensor:
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
    except Exception as e:
        raise DatasetError(f"{where}: cannot read mask {path}: {e}") from e
    if img.mode in ("RGBA", "LA"):
        img = img.getchannel("A")
    return torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)


@dataclass
class View:
    """A loaded view at some resolution: premultiplied RGBA and a pinhole camera (c2w in module coordinates)."""

    rgba: torch.Tensor  # [H, W, 4] premultiplied rgb, alpha
    c2w: torch.Tensor  # [4, 4] float32
    fx: float
    fy: float
    cx: float
    cy: float
    frame: FrameRecord
    distortion: Optional[Tuple[float, ...]] = None  # (k1, k2, k3, k4, p1, p2); None: an ideal pinhole
    model: str = "opencv"  # opencv | fisheye (threestudio.ops.distortion)

    @property
    def height(self) -> int:
        return int(self.rgba.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgba.shape[1])

    @property
    def distorted(self) -> bool:
        return self.distortion is not None or self.model != "opencv"

    def rays(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """World-space rays [H, W, 3] of every pixel (unit directions), through the lens model when distorted."""
        if self.distorted:
            from threestudio.ops.distortion import camera_ray_directions

            params = torch.tensor(self.distortion or (0.0,) * 6, dtype=torch.float64)
            dirs = camera_ray_directions(self.height, self.width, self.fx, self.fy, self.cx, self.cy, params,
                                         model=self.model, device=None).float()
        else:
            dirs = get_ray_directions(self.height, self.width, (self.fx, self.fy), principal=(self.cx, self.cy))
        return get_rays(dirs, self.c2w, normalize=True)  # [H, W, 3] each


def _intrinsics(f: Dict[str, Any], W: int, H: int) -> Tuple[float, float, float, float]:
    """fx, fy, cx, cy in pixels of a W x H image from a frame's fields."""
    fx = f["fl_x"] if "fl_x" in f else 0.5 * W / math.tan(0.5 * f["camera_angle_x"])
    if "fl_y" in f:
        fy = f["fl_y"]
    elif "camera_angle_y" in f and "fl_x" not in f:
        fy = 0.5 * H / math.tan(0.5 * f["camera_angle_y"])
    else:
        fy = fx
    return float(fx), float(fy), float(f.get("cx", 0.5 * W)), float(f.get("cy", 0.5 * H))


def _points_path(top: Dict[str, Any], frames: List[FrameRecord]) -> Optional[str]:
    rel = top.get("ply_file_path")
    if not rel:
        return None
    base = os.path.dirname(os.path.abspath(frames[0].json_path))
    path = rel if os.path.isabs(rel) else os.path.normpath(os.path.join(base, str(rel)))
    if not os.path.isfile(path):
        raise DatasetError(f"{frames[0].json_path}: ply_file_path '{rel}' not found ({path}).")
    return path


def _up_rotation(up: np.ndarray) -> np.ndarray:
    """The rotation [3, 3] taking the direction ``up`` to +z by the shortest arc (Rodrigues)."""
    a = up / max(np.linalg.norm(up), 1e-12)
    z = np.array([0.0, 0.0, 1.0])
    v, c = np.cross(a, z), float(np.dot(a, z))
    if c < -1.0 + 1e-9:  # pointing down: half a turn about x
        return np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def load_view(rec: FrameRecord, c2w: torch.Tensor, downscale: int, undistort: bool = False) -> View:
    """Load a frame's image (and mask), check its size against w/h, resolve intrinsics and downscale by area.

    With ``undistort``, a distorted photo is first resampled at full resolution into the pinhole camera of
    :func:`threestudio.ops.distortion.undistorted_intrinsics` (cropped so that every pixel is valid), and the
    returned view is an ideal pinhole camera."""
    rgba = _load_rgba(rec.image_path, rec.where("file_path"))
    H, W = rgba.shape[:2]
    f = rec.fields
    for key, actual in (("w", W), ("h", H)):
        if key in f and int(f[key]) != actual:
            raise DatasetError(f"{rec.where('file_path')}: image {rec.image_path} is {W}x{H} (w x h) but the file "
                               f"says {key}={int(f[key])}.")
    if rec.mask_path is not None:
        mask = _load_mask(rec.mask_path, rec.where("mask_path"))
        if tuple(mask.shape) != (H, W):
            raise DatasetError(f"{rec.where('mask_path')}: mask {rec.mask_path} is {mask.shape[1]}x{mask.shape[0]} "
                               f"but its image is {W}x{H}.")
        rgba[..., 3] = mask
    fx, fy, cx, cy = _intrinsics(f, W, H)
    rgba[..., :3] = rgba[..., :3] * rgba[..., 3:]
    dist, model = frame_distortion(rec), str(f.get("model", "opencv"))
    if undistort and (dist is not None or model != "opencv"):
        from threestudio.ops.distortion import undistort_image

        params = torch.tensor(dist or (0.0,) * 6, dtype=torch.float64)
        rgba, valid = undistort_image(rgba, fx, fy, cx, cy, params, model)
        rgba = rgba * valid  # premultiplied: outside the photo is transparent (the default crop has none)
        fx, fy, cx, cy = undistorted_pinhole(rec, W, H)[:4]
        H, W = rgba.shape[:2]
        dist, model = None, "opencv"
    if downscale > 1:
        h2, w2 = max(1, round(H / downscale)), max(1, round(W / downscale))
        rgba = F.interpolate(rgba.permute(2, 0, 1)[None], size=(h2, w2), mode="area")[0].permute(1, 2, 0)
        sx, sy = w2 / W, h2 / H
        fx, cx, fy, cy = fx * sx, cx * sx, fy * sy, cy * sy
    return View(rgba.contiguous(), c2w.float(), float(fx), float(fy), float(cx), float(cy), rec, dist, model)


def _camera_record(j: int, v: View, rec: FrameRecord, offset: int = 0) -> Dict[str, Any]:
    """What :meth:`MultiviewDataModule.train_view` tells about a loaded training view (no pixels)."""
    return {"index": j, "frame": rec.index, "image_path": rec.image_path, "c2w": v.c2w.clone(),
            "intrinsics": torch.tensor([v.fx, v.fy, v.cx, v.cy], dtype=torch.float32), "height": v.height,
            "width": v.width, "offset": offset}


def _as_rgba(image: Any, height: int, width: int, where: str) -> torch.Tensor:
    """An [H, W, 3] (opaque) or [H, W, 4] image in [0, 1] as float32 RGBA [H, W, 4], checked against the size."""
    img = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image).detach().float().cpu()
    if img.dim() != 3 or img.shape[-1] not in (3, 4) or tuple(img.shape[:2]) != (height, width):
        raise ValueError(f"{where}: expected an image of {height}x{width} (h x w) with 3 or 4 channels, got shape "
                         f"{tuple(img.shape)}")
    if not torch.isfinite(img).all():
        raise ValueError(f"{where}: the image has non-finite values")
    img = img.clamp(0.0, 1.0)
    if img.shape[-1] == 3:
        img = torch.cat([img, torch.ones_like(img[..., :1])], -1)
    return img


def undistorted_pinhole(rec: FrameRecord, W: int, H: int) -> Tuple[float, float, float, float, int, int]:
    """The pinhole camera (fx, fy, cx, cy, width, height) a distorted frame of size W x H is resampled into."""
    from threestudio.ops.distortion import undistorted_intrinsics

    fx, fy, cx, cy = _intrinsics(rec.fields, W, H)
    params = torch.tensor(frame_distortion(rec) or (0.0,) * 6, dtype=torch.float64)
    return undistorted_intrinsics(H, W, fx, fy, cx, cy, params, str(rec.fields.get("model", "opencv")))


def frame_distortion(rec: FrameRecord) -> Optional[Tuple[float, ...]]:
    """A frame's (k1, k2, k3, k4, p1, p2), or None when all are zero (or were dropped: ``distortion: ignore``)."""
    vals = tuple(float(rec.fields.get(k, 0.0)) for k in DISTORTION_KEYS)
    return vals if any(v != 0.0 for v in vals) else None


def projection_from_intrinsics(fx: float, fy: float, cx: float, cy: float, height: int, width: int,
                               near: float = 0.01, far: float = 100.0) -> torch.Tensor:
    """OpenGL projection [1, 4, 4] of a pinhole camera (as ``perspective_projection`` with ``flip_y=False``, plus
    the principal point): pixel (u, v) = (cx + fx x/-z, cy - fy y/-z) maps to NDC (2u/W - 1, 1 - 2v/H)."""
    proj = perspective_projection(torch.tensor([2.0 * math.atan(0.5 * height / fy)]), width / height, near, far)
    proj[:, 0, 0] = 2.0 * fx / width
    proj[:, 1, 1] = 2.0 * fy / height
    proj[:, 0, 2] = 1.0 - 2.0 * cx / width
    proj[:, 1, 2] = 2.0 * cy / height - 1.0
    return proj


def synthetic_scene_allowed(root: str) -> bool:
    """Whether the procedural scene may be rendered into ``root``: a folder that already holds a scene of ours (see
    :func:`~threestudio.data.synthetic_scene.is_synthetic_scene`), or a missing or empty folder under the
    repository's ``load/scenes/``. Any other folder may be the user's, and is never written to."""
    from threestudio.data.synthetic_scene import is_synthetic_scene
    from threestudio.utils.extensions import REPO_ROOT

    real = os.path.realpath(root)
    if is_synthetic_scene(real):
        return True
    scenes = os.path.realpath(os.path.join(REPO_ROOT, "load", "scenes"))
    if not real.startswith(scenes + os.sep):
        return False
    return not os.path.exists(real) or (os.path.isdir(real) and not os.listdir(real))


def _focus_point(c2w: np.ndarray) -> Optional[np.ndarray]:
    """The point closest (least squares) to all cameras' optical axes, or None when they are (nearly) parallel."""
    o = c2w[:, :3, 3]
    d = -c2w[:, :3, 2]
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    P = np.eye(3)[None] - d[:, :, None] * d[:, None, :]
    A = P.sum(0)
    b = (P @ o[:, :, None]).sum(0)[:, 0]
    if np.linalg.cond(A) > 1e6:
        return None
    return np.linalg.solve(A, b)


def _even_subset(n: int, k: int) -> List[int]:
    """k indices spread evenly over range(n) (all of them for k <= 0 or k >= n)."""
    if k <= 0 or k >= n:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


# ---------------------------------------------------------------------------------------------------- eval set
class EvalViews(Dataset):
    """One full image per item (batch of 1); rays are built when an item is read."""

    def __init__(self, views: List[View], bg: torch.Tensor) -> None:
        self.views = views
        self.bg = bg

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        v = self.views[i]
        rays_o, rays_d = v.rays()
        rgb = v.rgba[..., :3] + self.bg * (1.0 - v.rgba[..., 3:])
        c2w = v.c2w[None]
        proj = projection_from_intrinsics(v.fx, v.fy, v.cx, v.cy, v.height, v.width)
        fovy = 2.0 * math.atan(0.5 * v.height / v.fy)
        pos = c2w[:, :3, 3]
        return {
            "rays_o": rays_o[None], "rays_d": rays_d[None], "rgb": rgb[None], "mask": v.rgba[None, ..., 3:],
            "c2w": c2w, "proj_mtx": proj, "mvp_mtx": mvp_matrix(c2w, proj), "camera_positions": pos,
            "light_positions": pos.clone(), "fovy": torch.tensor([math.degrees(fovy)]),
            "fovy_rad": torch.tensor([fovy]), "intrinsics": torch.tensor([[v.fx, v.fy, v.cx, v.cy]]),
            "bg_color": self.bg.clone(), "height": v.height, "width": v.width, "index": i,
        }


# ---------------------------------------------------------------------------------------------------- module
@threestudio.register("multiview")
class MultiviewDataModule(BaseDataModule):
    """Posed multi-view images (nerfstudio / Blender transforms files); see the module docstring."""

    Config = MultiviewDataModuleConfig
    cfg: Config

    def prepare_data(self) -> None:
        """Lightning calls this once per node, on local rank 0, before ``setup``.

        The procedural scene is rendered only into a folder that belongs to the framework (see
        :func:`synthetic_scene_allowed`: the recipes' default under ``load/scenes/``, or a folder holding a scene of
        ours). A folder of the user's is never written to: ``synthetic_scene`` is then ignored and the folder must
        hold the dataset."""
        if self.cfg.synthetic_scene is None:
            return
        from omegaconf import OmegaConf

        from threestudio.data.synthetic_scene import make_scene
        from threestudio.utils.extensions import REPO_ROOT

        root = self.cfg.dataroot
        if not os.path.isabs(root):
            root = os.path.join(REPO_ROOT, root)
        if not synthetic_scene_allowed(root):
            info(f"multiview: data.dataroot={self.cfg.dataroot} is not a synthetic-scene folder of ours, so "
                 f"data.synthetic_scene is ignored: the folder is read as a dataset and never written to.")
            return
        params = OmegaConf.to_container(self.cfg.synthetic_scene) if OmegaConf.is_config(
            self.cfg.synthetic_scene) else dict(self.cfg.synthetic_scene)
        result = make_scene(root, **params)
        if not getattr(result, "skipped", False):
            info(f"Rendered the synthetic scene into {root}")

    def __init__(self, cfg: Optional[Any] = None) -> None:
        super().__init__(cfg)
        self._check_config()
        self._parsed: Optional[Dict[str, Any]] = None
        self._train: Optional[Dict[str, torch.Tensor]] = None
        self._eval: Dict[str, EvalViews] = {}
        self._train_cams: List[Dict[str, Any]] = []  # per training view: camera and where its pixels are
        self._originals: Dict[int, torch.Tensor] = {}  # training images as loaded, kept when first replaced

    # ---- config
    def _check_config(self) -> None:
        c = self.cfg

        def bad(key: str, value: Any, how: str) -> None:
            raise DatasetError(f"data.{key}={value!r} is invalid for the 'multiview' data module: {how}.")

        if c.background not in BACKGROUNDS:
            bad("background", c.background, f"use one of {', '.join(BACKGROUNDS)}")
        if c.eval_background is not None and c.eval_background not in ("white", "black"):
            bad("eval_background", c.eval_background, "use white or black (or leave it null)")
        if c.recenter not in RECENTER:
            bad("recenter", c.recenter, f"use one of {', '.join(RECENTER)}")
        if c.orient not in ("none", "up"):
            bad("orient", c.orient, "use none or up")
        if c.distortion not in DISTORTION:
            bad("distortion", c.distortion, f"use one of {', '.join(DISTORTION)}")
        if c.downscale < 1:
            bad("downscale", c.downscale, "use an integer >= 1")
        if c.eval_downscale is not None and c.eval_downscale < 1:
            bad("eval_downscale", c.eval_downscale, "use an integer >= 1 or null")
        if c.batch_size < 1:
            bad("batch_size", c.batch_size, "use a positive number of rays")
        if c.test_every < 0:
            bad("test_every", c.test_every, "use 0 (no held-out frames) or a positive integer")
        if c.scene_scale <= 0:
            bad("scene_scale", c.scene_scale, "use a positive number")
        if c.camera_radius is not None and c.camera_radius <= 0:
            bad("camera_radius", c.camera_radius, "use a positive number or null")

    # ---- files and splits
    def _parse(self) -> Dict[str, Any]:
        if self._parsed is not None:
            return self._parsed
        c = self.cfg
        root = _resolve_dataroot(c.dataroot)
        tops: Dict[str, Dict[str, Any]] = {}
        splits: Dict[str, List[FrameRecord]] = {}
        if os.path.isfile(root) or not os.path.isfile(os.path.join(root, f"transforms_{c.train_split}.json")):
            single = root if os.path.isfile(root) else os.path.join(root, "transforms.json")
            if not os.path.isfile(single):
                raise DatasetError(
                    f"data.dataroot='{c.dataroot}' ({root}) holds neither transforms_{c.train_split}.json (split "
                    f"files) nor transforms.json (one file)."
                )
            layout = "single"
            top, frames = parse_transforms(single, c.distortion)
            tops["train"] = top
            splits.update(self._split_single(single, top, frames))
        else:
            layout = "splits"
            for kind, name in (("train", c.train_split), ("val", c.val_split), ("test", c.test_split)):
                path = os.path.join(root, f"transforms_{name}.json")
                if os.path.isfile(path):
                    tops[kind], splits[kind] = parse_transforms(path, c.distortion)
            if "val" not in splits and "test" in splits:
                splits["val"] = splits["test"]
                info(f"multiview: no transforms_{c.val_split}.json in {root}; validating on the test split.")
            if "test" not in splits and "val" in splits:
                splits["test"] = splits["val"]
                info(f"multiview: no transforms_{c.test_split}.json in {root}; testing on the val split.")
            if "val" not in splits:
                warn(f"multiview: {root} has no val or test split file; evaluating on the training views.")
                splits["val"] = splits["test"] = splits["train"]
        center, scale, rotation = self._normalisation(splits["train"])
        self._parsed = {"root": root, "layout": layout, "tops": tops, "splits": splits, "center": center,
                        "scale": scale, "rotation": rotation, "points_path": _points_path(tops.get("train", {}),
                                                                                        splits["train"])}
        return self._parsed

    def _split_single(self, path: str, top: Dict[str, Any], frames: List[FrameRecord]
                      ) -> Dict[str, List[FrameRecord]]:
        lists = {k: top.get(f"{k}_filenames") for k in ("train", "val", "test")}
        if lists["train"] is not None:
            base = os.path.dirname(os.path.abspath(path))
            by_path = {os.path.normpath(r.image_path): r for r in frames}
            out: Dict[str, List[FrameRecord]] = {}
            for kind, names in lists.items():
                if names is None:
                    continue
                if not isinstance(names, list):
                    raise DatasetError(f"{path}: {kind}_filenames must be a list of file paths.")
                recs = []
                for j, n in enumerate(names):
                    key = os.path.normpath(os.path.join(base, str(n)))
                    if key not in by_path:
                        raise DatasetError(f"{path}: {kind}_filenames[{j}]='{n}' is not the file_path of any frame.")
                    recs.append(by_path[key])
                out[kind] = recs
            out.setdefault("val", out.get("test", out["train"]))
            out.setdefault("test", out["val"])
            return out
        k = self.cfg.test_every
        held = [r for r in frames if k > 0 and r.index % k == 0]
        train = [r for r in frames if not (k > 0 and r.index % k == 0)]
        if not train or not held:
            if k > 0:
                warn(f"multiview: {path} has {len(frames)} frames; with test_every={k} there is nothing to "
                     f"{'train on' if not train else 'hold out'}: training and evaluating on all frames.")
            return {"train": frames, "val": frames, "test": frames}
        return {"train": train, "val": held, "test": held}

    def _normalisation(self, train: List[FrameRecord]) -> Tuple[np.ndarray, float, np.ndarray]:
        """(center, scale, rotation [3, 3]) of the map from the file's world frame to this module's."""
        c = self.cfg
        c2w = np.stack([r.c2w for r in train])
        if c.recenter == "focus":
            center = _focus_point(c2w)
            if center is None:
                warn("multiview: recenter=focus: the training cameras' axes are (nearly) parallel; using the mean "
                     "camera position instead.")
                center = c2w[:, :3, 3].mean(0)
        elif c.recenter == "cameras":
            center = c2w[:, :3, 3].mean(0)
        else:
            center = np.asarray(c.center, dtype=np.float64)
        rot = _up_rotation(c2w[:, :3, 1].mean(0)) if c.orient == "up" else np.eye(3)
        scale = float(c.scene_scale)
        offsets = (c2w[:, :3, 3] - center) @ rot.T
        if c.camera_radius is not None:
            mean_dist = float(np.linalg.norm(offsets, axis=-1).mean())
            if mean_dist < 1e-9:
                raise DatasetError("data.camera_radius is set but the training cameras all sit at the centre.")
            scale *= float(c.camera_radius) / mean_dist
        elif c.camera_extent:
            extent = float(np.abs(offsets).max())
            if extent < 1e-9:
                raise DatasetError("data.camera_extent is set but the training cameras all sit at the centre.")
            scale /= extent
        return center, scale, rot

    def _c2w(self, rec: FrameRecord) -> torch.Tensor:
        p = self._parse()
        m = rec.c2w.copy()
        m[:3, :3] = p["rotation"] @ m[:3, :3]
        m[:3, 3] = (p["rotation"] @ (m[:3, 3] - p["center"])) * p["scale"]
        return torch.from_numpy(m).float()

    def to_module_frame(self, points: np.ndarray) -> np.ndarray:
        """Points [N, 3] of the file's world frame -> this module's coordinates (as the cameras are mapped)."""
        p = self._parse()
        return ((np.asarray(points, dtype=np.float64) - p["center"]) @ p["rotation"].T) * p["scale"]

    # ---- scene info for systems
    @property
    def scene_info(self) -> Dict[str, Any]:
        """What the data says about the scene, in this module's coordinates (no images are loaded):

        ``radius`` (float or None): bounding radius of the object around the origin, from the file's
        ``scene_radius`` (+ the distance of its ``scene_center`` from the origin), times the scale;
        ``bbox`` ([2, 3] tensor or None): the cube [-radius, radius]^3; ``center`` (file coordinates mapped to the
        origin), ``scale``, ``rotation``; ``camera_distance`` (mean training camera distance from the origin);
        ``camera_extent`` (largest distance of a training camera from their mean position: the scale of the camera
        layout); ``n_train``/``n_val``/``n_test`` (frames); ``layout`` ("splits" or "single"); ``applied_transform``
        (nerfstudio's, or None); ``root`` (the resolved dataroot); ``points_path`` (the sparse point cloud the file
        names in ``ply_file_path``, or None).
        """
        p = self._parse()
        top = p["tops"].get("train", {})
        radius = None
        if "scene_radius" in top:
            sc = np.asarray(top.get("scene_center", [0.0, 0.0, 0.0]), dtype=np.float64)
            radius = (float(top["scene_radius"]) + float(np.linalg.norm(sc - p["center"]))) * p["scale"]
        cams = self.to_module_frame(np.stack([r.c2w[:3, 3] for r in p["splits"]["train"]]))
        return {
            "radius": radius,
            "bbox": None if radius is None else torch.tensor([[-radius] * 3, [radius] * 3], dtype=torch.float32),
            "center": [float(v) for v in p["center"]],
            "scale": p["scale"],
            "rotation": p["rotation"].tolist(),
            "camera_distance": float(np.linalg.norm(cams, axis=-1).mean()),
            "camera_extent": float(np.linalg.norm(cams - cams.mean(0), axis=-1).max()),
            "n_train": len(p["splits"]["train"]), "n_val": len(p["splits"]["val"]),
            "n_test": len(p["splits"]["test"]), "layout": p["layout"],
            "applied_transform": top.get("applied_transform"), "root": p["root"],
            "points_path": p["points_path"],
        }

    @property
    def scene_points(self) -> Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """The sparse point cloud named by the transforms file's ``ply_file_path`` (nerfstudio's convention: in the
        frame of the poses), mapped to this module's coordinates: (points [N, 3], colours [N, 3] in [0, 1] or
        None); None when the file names none."""
        path = self._parse()["points_path"]
        if path is None:
            return None
        from threestudio.utils.saving import read_ply_points

        try:
            d = read_ply_points(path)
        except Exception as e:  # noqa: BLE001 - any parse failure is a dataset error
            raise DatasetError(f"ply_file_path: cannot read the point cloud {path}: {e}") from e
        if not all(k in d for k in ("x", "y", "z")):
            raise DatasetError(f"ply_file_path: {path} has no x/y/z vertex properties.")
        pts = self.to_module_frame(np.stack([d["x"], d["y"], d["z"]], -1))
        rgb = None
        if all(k in d for k in ("red", "green", "blue")):
            rgb = np.stack([d["red"], d["green"], d["blue"]], -1).astype(np.float32)
            rgb = rgb / 255.0 if np.asarray(d["red"]).dtype == np.uint8 else rgb
            rgb = torch.from_numpy(rgb)
        return torch.from_numpy(pts).float(), rgb

    def train_cameras(self) -> List[Dict[str, Any]]:
        """The training cameras without their images: ``c2w`` [4, 4] (module frame), ``fx, fy, cx, cy, width,
        height`` at the training ``downscale`` (image sizes come from the file's ``w``/``h`` or the image header)."""
        from PIL import Image

        out = []
        for rec in self._parse()["splits"]["train"]:
            f = rec.fields
            if "w" in f and "h" in f:
                W, H = int(f["w"]), int(f["h"])
            else:
                with Image.open(rec.image_path) as im:
                    W, H = im.size
            fx, fy, cx, cy = _intrinsics(f, W, H)
            k = self.cfg.downscale
            h2, w2 = max(1, round(H / k)), max(1, round(W / k))
            sx, sy = w2 / W, h2 / H
            out.append({"c2w": self._c2w(rec), "fx": fx * sx, "fy": fy * sy, "cx": cx * sx, "cy": cy * sy,
                        "width": w2, "height": h2})
        return out

    # ---- loading
    def setup(self, stage: Optional[str] = None) -> None:
        self._parse()
        if stage in (None, "fit"):
            self._load_train()
            self._load_eval("val")
        if stage == "validate":
            self._load_eval("val")
        if stage in ("test", "predict"):
            self._load_eval("test")

    def _load_train(self) -> Dict[str, torch.Tensor]:
        if self._train is not None:
            return self._train
        recs = self._parse()["splits"]["train"]
        pix, dirs, cam, origins = [], [], [], []
        from rich.progress import track

        seq: Any = recs if len(recs) < 50 else track(recs, description="Loading training views")
        self._train_cams, offset = [], 0
        for j, rec in enumerate(seq):
            v = self._view(rec, self.cfg.downscale)
            _, rays_d = v.rays()
            pix.append(v.rgba.reshape(-1, 4).half())
            dirs.append(rays_d.reshape(-1, 3))
            cam.append(torch.full((v.height * v.width,), j, dtype=torch.int32))
            origins.append(v.c2w[:3, 3])
            self._train_cams.append(_camera_record(j, v, rec, offset))
            offset += v.height * v.width
        self._train = {"pixels": torch.cat(pix), "rays_d": torch.cat(dirs), "image_index": torch.cat(cam),
                       "origins": torch.stack(origins)}
        info(f"multiview: {len(recs)} training views, {self._train['pixels'].shape[0]} pixels.")
        return self._train

    def _view(self, rec: FrameRecord, downscale: int) -> View:
        """One frame, loaded for this module (the images module undistorts and caches here)."""
        return load_view(rec, self._c2w(rec), downscale)

    def _eval_bg(self) -> torch.Tensor:
        name = self.cfg.eval_background or ("white" if self.cfg.background == "random" else self.cfg.background)
        return torch.ones(3) if name == "white" else torch.zeros(3)

    def _load_eval(self, kind: str) -> EvalViews:
        if kind in self._eval:
            return self._eval[kind]
        recs = self._parse()["splits"][kind]
        n = self.cfg.n_val_views if kind == "val" else self.cfg.n_test_views
        ds = self.cfg.eval_downscale if self.cfg.eval_downscale is not None else self.cfg.downscale
        views = [self._view(recs[i], ds) for i in _even_subset(len(recs), n)]
        self._eval[kind] = EvalViews(views, self._eval_bg())
        return self._eval[kind]

    # ---- editable training images (Instruct-NeRF2NeRF's dataset update); nothing is written to disk
    @property
    def n_train_views(self) -> int:
        self._load_train()
        return len(self._train_cams)

    def train_view(self, j: int) -> Dict[str, Any]:
        """Training view ``j`` (0 .. n_train_views - 1, in the order of the training split) at the training
        resolution: ``index`` (j), ``frame`` (its position in the transforms file), ``image_path``, ``c2w`` [4, 4],
        ``intrinsics`` [4] (fx, fy, cx, cy in pixels), ``height``, ``width``, ``rgba`` [H, W, 4] (the current
        training image: premultiplied colour and alpha, as training reads it, float32 on the CPU), ``rgb`` [H, W, 3]
        (``rgba`` composited on ``background`` [3], the evaluation background) and, for ray renderers (this module),
        ``rays_o`` and ``rays_d`` [H, W, 3]: the training rays of its pixels, lens distortion included."""
        cam = self._camera(j)
        out = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in cam.items() if k != "offset"}
        rgba, bg = self._get_image(j), self._eval_bg()
        out.update(rgba=rgba, rgb=rgba[..., :3] + bg * (1.0 - rgba[..., 3:]), background=bg)
        out.update(self._view_rays(j))
        return out

    def train_views(self) -> List[Dict[str, Any]]:
        """Every training view, as :meth:`train_view` gives it."""
        return [self.train_view(j) for j in range(self.n_train_views)]

    def original_train_image(self, j: int) -> torch.Tensor:
        """Training image ``j`` as loaded (premultiplied RGBA [H, W, 4], float32, CPU), whatever replaced it since."""
        self._camera(j)
        return self._originals[j].float().clone() if j in self._originals else self._get_image(j)

    def replace_train_image(self, j: int, image: Any) -> None:
        """Train on ``image`` instead of training image ``j`` from the next batch on: [H, W, 3] colours in [0, 1]
        (opaque), or [H, W, 4] premultiplied RGBA, at the training resolution. The pixels are written in place into
        the training tensors (on whatever device they are); the image as loaded stays available through
        :meth:`original_train_image`."""
        cam = self._camera(j)
        rgba = _as_rgba(image, cam["height"], cam["width"], f"replace_train_image({j})")
        if j not in self._originals:
            self._originals[j] = self._stored_image(j).detach().cpu().clone()
        self._set_image(j, rgba)

    def edited_indices(self) -> List[int]:
        """The training views whose image was replaced (sorted)."""
        return sorted(self._originals)

    def _camera(self, j: Any) -> Dict[str, Any]:
        self._load_train()
        n = len(self._train_cams)
        try:
            ok = 0 <= j.__index__() < n and not isinstance(j, bool)
        except (AttributeError, TypeError):
            ok = False
        if not ok:
            raise IndexError(f"training view {j!r} does not exist: there are {n} (0 .. {n - 1})")
        return self._train_cams[int(j)]

    def _pixel_slice(self, j: int) -> slice:
        cam = self._camera(j)
        return slice(cam["offset"], cam["offset"] + cam["height"] * cam["width"])

    def _stored_image(self, j: int) -> torch.Tensor:
        """Training image ``j`` as stored (premultiplied RGBA [H, W, 4], in the storage's dtype and device)."""
        cam = self._camera(j)
        return self._load_train()["pixels"][self._pixel_slice(j)].reshape(cam["height"], cam["width"], 4)

    def _get_image(self, j: int) -> torch.Tensor:
        return self._stored_image(j).float().cpu()

    def _set_image(self, j: int, rgba: torch.Tensor) -> None:
        pixels = self._load_train()["pixels"]
        pixels[self._pixel_slice(j)] = rgba.reshape(-1, 4).to(pixels.device, pixels.dtype)

    def _view_rays(self, j: int) -> Dict[str, torch.Tensor]:
        cam = self._camera(j)
        H, W = cam["height"], cam["width"]
        rays_d = self._load_train()["rays_d"][self._pixel_slice(j)].float().cpu().reshape(H, W, 3)
        return {"rays_o": cam["c2w"][:3, 3].expand(H, W, 3).clone(), "rays_d": rays_d}

    # ---- batches
    def draw_train_batch(self, device: torch.device) -> Dict[str, Any]:
        t = self._load_train()
        device = torch.device(device)
        if self.cfg.load_to_device and t["pixels"].device != device:
            t = self._train = {k: v.to(device) for k, v in t.items()}
        g = self.stream.generator
        n = self.cfg.batch_size
        idx = torch.randint(t["pixels"].shape[0], (n,), generator=g)
        bg = torch.rand(n, 3, generator=g) if self.cfg.background == "random" else None
        idx = idx.to(t["pixels"].device)
        pix = t["pixels"][idx].float()
        img = t["image_index"][idx].long()
        if bg is None:
            bg = torch.full((n, 3), 1.0 if self.cfg.background == "white" else 0.0)
        bg = bg.to(pix.device)
        alpha = pix[:, 3:]
        batch = {
            "rays_o": t["origins"][img], "rays_d": t["rays_d"][idx], "rgb": pix[:, :3] + bg * (1.0 - alpha),
            "mask": alpha, "bg_color": bg, "image_index": img,
        }
        return {k: v.to(device) for k, v in batch.items()}

    def train_dataloader(self) -> DataLoader:
        return self.train_request_loader()

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._load_eval("val"), batch_size=None, shuffle=False, num_workers=0)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self._load_eval("test"), batch_size=None, shuffle=False, num_workers=0)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
