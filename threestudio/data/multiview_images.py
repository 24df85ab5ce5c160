"""``multiview-images``: the ``multiview`` data module with whole training images instead of random rays.

Rasterizers (gaussian splatting) render whole images, so each training batch here is ``batch_size`` random training
views (drawn at consumption time with the module's saved generator, like every training batch), optionally
cropped to a random ``patch_size`` square. Files, splits, coordinates, backgrounds and the evaluation batches are
exactly those of ``multiview`` (same config keys, see :mod:`threestudio.data.multiview`), except ``batch_size``,
which counts images here.

Train batch: ``rgb`` [B, H, W, 3] (composited on ``bg_color``), ``mask`` [B, H, W, 1], ``bg_color`` [B, 3],
``c2w`` [B, 4, 4], ``intrinsics`` [B, 4] (fx, fy, cx, cy in pixels of the crop), ``camera_positions``,
``light_positions`` [B, 3], ``fovy_rad`` [B], ``image_index`` [B] (long), ``height``, ``width`` (ints).
Views of different sizes can only be drawn one at a time (``batch_size: 1``) unless ``patch_size`` is set.

Distorted cameras (``OPENCV`` with non-zero k/p, ``OPENCV_FISHEYE``): rasterizers need pinhole images, so every
training and evaluation photo is resampled once, at full resolution, into the pinhole camera of
:func:`threestudio.ops.distortion.undistorted_intrinsics` (cropped so every pixel is inside the photo), then
downscaled. The results are cached (``undistort_cache``: default ``$THREESTUDIO_CACHE/undistorted``, else
``~/.cache/threestudio/undistorted``; keyed by the file, its modification time, its camera and the downscale), never
written next to the photos.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

import threestudio
from threestudio.data.multiview import (
    DatasetError,
    FrameRecord,
    MultiviewDataModule,
    View,
    _camera_record,
    frame_distortion,
    load_view,
)
from threestudio.data.schema import MultiviewImagesDataModuleConfig
from threestudio.utils.log import info


@threestudio.register("multiview-images")
class MultiviewImagesDataModule(MultiviewDataModule):
    Config = MultiviewImagesDataModuleConfig
    cfg: Config

    def __init__(self, cfg: Optional[Any] = None) -> None:
        super().__init__(cfg)
        if self.cfg.patch_size is not None and self.cfg.patch_size < 1:
            raise DatasetError(f"data.patch_size={self.cfg.patch_size!r} is invalid for 'multiview-images': use a "
                               f"positive number of pixels or null.")
        self._views: Optional[List[View]] = None
        self._stack: Optional[Dict[str, torch.Tensor]] = None

    def _load_train(self) -> Dict[str, torch.Tensor]:  # type: ignore[override]
        if self._stack is not None:
            return self._stack
        recs = self._parse()["splits"]["train"]
        self._views = [self._view(r, self.cfg.downscale) for r in recs]
        sizes = {(v.height, v.width) for v in self._views}
        if len(sizes) > 1 and self.cfg.batch_size > 1 and self.cfg.patch_size is None:
            raise DatasetError(f"data.batch_size={self.cfg.batch_size}: the training views have {len(sizes)} different "
                               f"sizes; use batch_size 1 or set data.patch_size to crop them to one size.")
        if self.cfg.patch_size is not None and self.cfg.patch_size > min(min(s) for s in sizes):
            raise DatasetError(f"data.patch_size={self.cfg.patch_size} is larger than the smallest training view "
                               f"({min(min(s) for s in sizes)} px).")
        self._train_cams = [_camera_record(j, v, r) for j, (v, r) in enumerate(zip(self._views, recs))]
        self._stack = {
            "c2w": torch.stack([v.c2w for v in self._views]),
            "intrinsics": torch.tensor([[v.fx, v.fy, v.cx, v.cy] for v in self._views], dtype=torch.float32),
        }
        if len(sizes) == 1:
            self._stack["rgba"] = torch.stack([v.rgba.half() for v in self._views])
        info(f"multiview-images: {len(self._views)} training views of {sorted(sizes)[0][1]}x{sorted(sizes)[0][0]}"
             f"{' (and other sizes)' if len(sizes) > 1 else ''}.")
        return self._stack

    def _view(self, rec: FrameRecord, downscale: int) -> View:  # type: ignore[override]
        if frame_distortion(rec) is None and rec.fields.get("model", "opencv") == "opencv":
            return load_view(rec, self._c2w(rec), downscale)
        return cached_undistorted_view(rec, self._c2w(rec), downscale, self.cfg.undistort_cache)

    # ---- editable training images (see MultiviewDataModule.train_view): the stacked images, or the view's own
    def _stored_image(self, j: int) -> torch.Tensor:  # type: ignore[override]
        self._camera(j)
        t = self._load_train()
        assert self._views is not None
        return t["rgba"][j] if "rgba" in t else self._views[j].rgba

    def _set_image(self, j: int, rgba: torch.Tensor) -> None:  # type: ignore[override]
        self._camera(j)
        t = self._load_train()
        assert self._views is not None
        if "rgba" in t:
            t["rgba"][j] = rgba.to(t["rgba"].device, t["rgba"].dtype)
        else:
            view = self._views[j]
            view.rgba = rgba.to(view.rgba.device, view.rgba.dtype).contiguous()

    def _view_rays(self, j: int) -> Dict[str, torch.Tensor]:  # type: ignore[override]
        return {}  # whole-image renderers take c2w and intrinsics

    def draw_train_batch(self, device: torch.device) -> Dict[str, Any]:
        t = self._load_train()
        device = torch.device(device)
        if self.cfg.load_to_device and t["c2w"].device != device:
            t = self._stack = {k: v.to(device) for k, v in t.items()}
        g = self.stream.generator
        n, b, ps = t["c2w"].shape[0], self.cfg.batch_size, self.cfg.patch_size
        idx = torch.randint(n, (b,), generator=g)
        bg = torch.rand(b, 3, generator=g) if self.cfg.background == "random" else torch.full(
            (b, 3), 1.0 if self.cfg.background == "white" else 0.0)
        assert self._views is not None
        if "rgba" in t:
            imgs: Any = t["rgba"][idx.to(t["rgba"].device)].float()
        else:  # views of several sizes: one at a time, or cropped to one size
            imgs = [self._views[int(i)].rgba.to(device) for i in idx]
        intr = t["intrinsics"][idx.to(t["intrinsics"].device)].clone()
        if ps is not None:
            crops = []
            for i in range(b):
                H, W = imgs[i].shape[:2]
                y0 = int(torch.randint(H - ps + 1, (1,), generator=g))
                x0 = int(torch.randint(W - ps + 1, (1,), generator=g))
                crops.append(imgs[i][y0:y0 + ps, x0:x0 + ps])
                intr[i, 2] -= x0
                intr[i, 3] -= y0
            rgba = torch.stack(crops)
        else:
            rgba = imgs if torch.is_tensor(imgs) else torch.stack(imgs)
        rgba = rgba.to(device)
        bg = bg.to(device)
        alpha = rgba[..., 3:]
        c2w = t["c2w"][idx.to(t["c2w"].device)]
        H, W = int(rgba.shape[1]), int(rgba.shape[2])
        fovy = 2.0 * torch.atan(0.5 * H / intr[:, 1])
        batch = {
            "rgb": rgba[..., :3] + bg[:, None, None, :] * (1.0 - alpha), "mask": alpha, "bg_color": bg,
            "c2w": c2w, "intrinsics": intr, "camera_positions": c2w[:, :3, 3], "light_positions": c2w[:, :3, 3],
            "fovy_rad": fovy, "fovy": torch.rad2deg(fovy), "image_index": idx,
        }
        out: Dict[str, Any] = {k: v.to(device) for k, v in batch.items()}
        out["height"], out["width"] = H, W
        return out



UNDISTORT_CACHE_VERSION = 1


def cached_undistorted_view(rec: FrameRecord, c2w: torch.Tensor, downscale: int, cache_dir: Optional[str] = None
                            ) -> View:
    """:func:`load_view` with ``undistort=True``, through a disk cache of the undistorted, downscaled image (8-bit
    premultiplied RGBA PNG) and its pinhole intrinsics (JSON). The key covers the image and mask files (path, size,
    modification time), the frame's camera fields and ``downscale``."""
    import hashlib
    import json
    import os

    import numpy as np
    from PIL import Image

    from threestudio.utils.misc import default_cache_root
    from threestudio.utils.saving import atomic_write_bytes

    folder = os.path.abspath(os.path.expanduser(cache_dir or os.path.join(default_cache_root(), "undistorted")))
    files = [rec.image_path] + ([rec.mask_path] if rec.mask_path else [])
    stats = [(os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in files]
    key_src = json.dumps({"v": UNDISTORT_CACHE_VERSION, "files": stats, "downscale": int(downscale),
                          "fields": {k: v for k, v in sorted(rec.fields.items())}}, sort_keys=True)
    key = hashlib.sha1(key_src.encode("utf-8")).hexdigest()[:20]
    png, meta = os.path.join(folder, key + ".png"), os.path.join(folder, key + ".json")
    if os.path.isfile(png) and os.path.isfile(meta):
        try:
            with open(meta, "r", encoding="utf-8") as f:
                m = json.load(f)
            rgba = torch.from_numpy(np.asarray(Image.open(png).convert("RGBA"), dtype=np.float32) / 255.0)
            return View(rgba, c2w.float(), m["fx"], m["fy"], m["cx"], m["cy"], rec)
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry: rebuild it
    view = load_view(rec, c2w, downscale, undistort=True)
    os.makedirs(folder, exist_ok=True)
    import io

    buf = io.BytesIO()
    arr = (view.rgba.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    Image.fromarray(arr, "RGBA").save(buf, format="PNG", compress_level=1)
    atomic_write_bytes(png, buf.getvalue())
    atomic_write_bytes(meta, json.dumps({"fx": view.fx, "fy": view.fy, "cx": view.cx, "cy": view.cy,
                                         "source": rec.image_path}).encode("utf-8"))
    # what later runs read back is the 8-bit image: use it now too, so a first run and a cached run agree
    return View(torch.from_numpy(arr.astype(np.float32) / 255.0), view.c2w, view.fx, view.fy, view.cx, view.cy, rec)
