"""``nelf-pseudo-data``: batches of a teacher's pseudo views (:mod:`.pseudo_data`) for the NeLF student.

Train batch (``batch_size`` random views of this rank's shard, drawn at consumption time with the module's saved
generator, with replacement): ``rays_o``, ``rays_d`` [B, h, w, 3] (the low-resolution rays, unit directions),
``rgb`` [B, H, W, 3] (the teacher's pixels), ``c2w`` [B, 4, 4], ``index`` [B] (long).

Validation / test items (one view each, batch of 1): ``kind`` ("pseudo" or "photo"), ``index``, ``rays_o``,
``rays_d`` [1, h', w', 3], ``rgb`` [1, s*h', s*w', 3], ``c2w`` [1, 4, 4], ``height``, ``width``. Pseudo items are the
held-out views of ``holdout.json`` (``n_val_views``/``n_test_views`` evenly spread ones; 0: all); without a
holdout file, evenly spread training views (with a warning). Photo items (``photos_dataroot`` set) are the held-out
real photos of a capture, loaded by ``multiview-images`` (undistorted to pinhole images) with the teacher's
world normalisation, resized to the student's output height (width by the photo's aspect ratio, a multiple of s)
with their intrinsics scaled alike: PSNR against real photos at the student's output size.

The photos' normalisation must be the teacher's, or the poses do not match the pseudo views' frame: give
``photos_trial`` (the teacher's trial folder or a checkpoint in it, or ``source``: the trial named in pseudo.json's
``source``; its ``configs/parsed.yaml`` data settings are used, and its dataroot when ``photos_dataroot`` is unset),
and/or the settings themselves in ``photos`` (which win). Without either, the capture recipes' settings
(``configs/base/capture-data.yaml``) are assumed.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import threestudio
from threestudio.data.base import BaseDataModule, rank_and_world
from threestudio.data.multiview import DatasetError
from threestudio.ops.cameras import get_ray_directions, get_rays
from threestudio.utils.log import info, warn

from .pseudo_data import PseudoData
from .schema import NeLFPseudoDataModuleConfig

# the capture recipes' world normalisation (configs/base/capture-data.yaml), assumed for photos without settings
CAPTURE_NORMALISATION = {"distortion": "apply", "recenter": "cameras", "orient": "up", "camera_extent": True,
                         "test_every": 8, "n_val_views": 0, "n_test_views": 0, "background": "white"}
# teacher data settings that are not about the photos' frame or selection
NOT_PHOTO_KEYS = {"dataroot", "batch_size", "patch_size", "load_to_device", "synthetic_scene", "seed_offset"}


def even_subset(n: int, k: int) -> List[int]:
    """k evenly spread indices of range(n) (all when k is 0 or >= n)."""
    if k <= 0 or k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


class EvalItems(Dataset):
    """A list of item builders (callables) evaluated when read."""

    def __init__(self, items: List[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return self.items[i]()


@threestudio.register("nelf-pseudo-data")
class NeLFPseudoDataModule(BaseDataModule):
    Config = NeLFPseudoDataModuleConfig
    cfg: Config

    def __init__(self, cfg: Optional[Any] = None) -> None:
        super().__init__(cfg)
        self._pseudo: Optional[PseudoData] = None
        self._rgb_dev: Optional[torch.Tensor] = None
        self._shard: Optional[torch.Tensor] = None  # this rank's training indices
        self._photos: Optional[Dict[str, List[Dict[str, Any]]]] = None
        self._warned_no_holdout = False

    # ---- the pseudo data
    def rank_world(self) -> Tuple[int, int]:
        return rank_and_world(self.trainer, self.cfg.rank, self.cfg.world_size)

    @property
    def pseudo(self) -> PseudoData:
        if self._pseudo is None:
            root = self.cfg.dataroot
            if root in ("", "???"):
                raise DatasetError("data.dataroot is not set: give a pseudo-data folder (pseudo.json, rgb.f16, "
                                   "c2w.f32) rendered from a trained teacher.")
            from threestudio.utils.extensions import REPO_ROOT

            root = os.path.expanduser(root)
            if not os.path.isabs(root) and not os.path.exists(root) and os.path.exists(os.path.join(REPO_ROOT, root)):
                root = os.path.join(REPO_ROOT, root)  # relative to the repository root, as multiview's dataroot
            rank, world = self.rank_world()
            self._pseudo = PseudoData(root, rank, world)
            p = self._pseudo
            info(f"nelf-pseudo-data: {len(p)} pseudo views of {p.width}x{p.height} ({p.lr_width}x{p.lr_height} rays, "
                 f"x{p.scale}) in {p.folder}; {len(p.train_indices)} for training ({len(p.indices)} on rank "
                 f"{rank} of {world}), {len(p.holdout)} held out.")
        return self._pseudo

    def camera(self) -> Dict[str, Any]:
        """The student's camera from the pseudo data: lr_height, lr_width, lr_intrinsics, near, far, upsample."""
        p = self.pseudo
        return {"lr_height": p.lr_height, "lr_width": p.lr_width, "lr_intrinsics": p.lr_intrinsics,
                "near": p.near, "far": p.far, "upsample": p.scale, "height": p.height, "width": p.width}

    @property
    def has_photos(self) -> bool:
        return bool(self.cfg.photos_dataroot or self.cfg.photos_trial)

    def setup(self, stage: Optional[str] = None) -> None:
        if stage == "predict":
            return  # the export needs the checkpoint only
        _ = self.pseudo

    # ---- training batches
    def draw_train_batch(self, device: torch.device) -> Dict[str, Any]:
        p = self.pseudo
        device = torch.device(device)
        g = self.stream.generator
        if self._shard is None:
            self._shard = torch.tensor(p.indices, dtype=torch.long)
        idx = self._shard[torch.randint(len(p.indices), (self.cfg.batch_size,), generator=g)]
        if self.cfg.rgb_on_device:
            if self._rgb_dev is None or self._rgb_dev.device != device:
                self._rgb_dev = p.rgb(torch.arange(len(p)), dtype=torch.float16).to(device)
            rgb = self._rgb_dev[idx.to(device)].float()
        else:
            rgb = p.rgb(idx, dtype=torch.float16).to(device, non_blocking=True).float()
        c2w = p.c2w(idx).to(device)
        rays_o, rays_d = p.low_res_rays(c2w)
        return {"rays_o": rays_o, "rays_d": rays_d, "rgb": rgb, "c2w": c2w, "index": idx.to(device)}

    def train_dataloader(self) -> DataLoader:
        return self.train_request_loader()

    # ---- evaluation
    def _pseudo_views(self, kind: str) -> List[int]:
        p = self.pseudo
        views = p.holdout
        if not views:
            views = p.train_indices
            if not self._warned_no_holdout:
                warn(f"nelf-pseudo-data: {p.folder} has no holdout.json: evaluating on training views (PSNR vs the "
                     f"teacher on views the student trains on).")
                self._warned_no_holdout = True
        n = self.cfg.n_val_views if kind == "val" else self.cfg.n_test_views
        return [views[i] for i in even_subset(len(views), n)]

    def _pseudo_item(self, i: int) -> Dict[str, Any]:
        p = self.pseudo
        c2w = p.c2w(i)
        rays_o, rays_d = p.low_res_rays(c2w)
        return {"kind": "pseudo", "index": int(i), "rays_o": rays_o[None], "rays_d": rays_d[None],
                "rgb": p.rgb(i)[None], "c2w": c2w[None], "height": p.height, "width": p.width}

    def photo_settings(self) -> Dict[str, Any]:
        """The multiview-images config for the photos (dataroot, normalisation, selection)."""
        from omegaconf import OmegaConf

        from threestudio.data.multiview_images import MultiviewImagesDataModule

        known = {f.name for f in dataclasses.fields(MultiviewImagesDataModule.Config)} - NOT_PHOTO_KEYS
        settings: Dict[str, Any] = {}
        dataroot = self.cfg.photos_dataroot
        if self.cfg.photos_trial:
            path = self._trial_config(self.cfg.photos_trial)
            tdata = OmegaConf.to_container(OmegaConf.load(path).get("data", {}), resolve=True) or {}
            settings.update({k: v for k, v in tdata.items() if k in known})
            dataroot = dataroot or tdata.get("dataroot")
        else:
            settings.update(CAPTURE_NORMALISATION)
            if not self.cfg.photos:
                info("nelf-pseudo-data: no photos_trial or photos settings: assuming the capture recipes' world "
                     f"normalisation for the photos ({CAPTURE_NORMALISATION}).")
        plain = OmegaConf.to_container(self.cfg.photos, resolve=True) if OmegaConf.is_config(self.cfg.photos) \
            else dict(self.cfg.photos)
        settings.update(plain)
        settings["dataroot"] = dataroot
        settings["load_to_device"] = False
        return settings

    def _trial_config(self, trial: str) -> str:
        """configs/parsed.yaml of a trial folder or of the trial of a checkpoint in it; "source": the trial that
        rendered the pseudo data (pseudo.json's ``source``)."""
        where = "data.photos_trial"
        if trial == "source":
            trial = self.pseudo.source
            where = f"data.photos_trial=source ({self.pseudo.folder}/pseudo.json's source)"
        path = os.path.abspath(os.path.expanduser(trial))
        for folder in (path, os.path.dirname(os.path.dirname(path))):  # a trial, or <trial>/ckpts/<name>.ckpt
            cfg = os.path.join(folder, "configs", "parsed.yaml")
            if os.path.isfile(cfg):
                return cfg
        raise DatasetError(f"{where}: {path} is neither a trial folder with configs/parsed.yaml nor a checkpoint "
                           f"inside one (give the teacher's trial folder, written by launch.py).")

    def _photo_items(self, kind: str) -> List[Dict[str, Any]]:
        if not self.has_photos:
            return []
        if self._photos is None:
            self._photos = {}
        if kind not in self._photos:
            from threestudio.data.multiview_images import MultiviewImagesDataModule

            dm = MultiviewImagesDataModule(self.photo_settings())
            dm.setup("validate" if kind == "val" else "test")
            ds = dm.val_dataloader().dataset if kind == "val" else dm.test_dataloader().dataset
            self._photos[kind] = [self._fit_photo(ds[j], j) for j in range(len(ds))]
            info(f"nelf-pseudo-data: {len(ds)} held-out photos for {kind} from {dm.scene_info['root']}.")
        return self._photos[kind]

    def _fit_photo(self, item: Dict[str, Any], j: int) -> Dict[str, Any]:
        """A held-out photo resized to the student's output height (width: the photo's aspect, a multiple of s),
        with the low-resolution rays of its (scaled) pinhole camera."""
        p = self.pseudo
        s = p.scale
        rgb = item["rgb"][0]  # [Hp, Wp, 3]
        Hp, Wp = int(rgb.shape[0]), int(rgb.shape[1])
        lh = p.lr_height
        lw = max(1, round(Wp * lh / Hp))
        H, W = lh * s, lw * s
        img = F.interpolate(rgb.permute(2, 0, 1)[None].float(), size=(H, W), mode="bilinear", antialias=True,
                            align_corners=False)[0].permute(1, 2, 0).clamp(0, 1)
        fx, fy, cx, cy = [float(v) for v in item["intrinsics"][0]]
        sx, sy = W / Wp / s, H / Hp / s  # photo pixels -> low-resolution grid
        c2w = item["c2w"][0].float()
        dirs = get_ray_directions(lh, lw, (fx * sx, fy * sy), (cx * sx, cy * sy))
        rays_o, rays_d = get_rays(dirs, c2w, normalize=True)
        out = {"kind": "photo", "index": j, "rays_o": rays_o[None], "rays_d": rays_d[None], "rgb": img[None],
               "c2w": c2w[None], "height": H, "width": W}
        teacher = self._teacher_view_at(c2w, H, W)
        if teacher is not None:  # the teacher's own render of this photo's camera: its PSNR next to the student's
            out["teacher_rgb"] = teacher[None]
        return out

    def _teacher_view_at(self, c2w: torch.Tensor, H: int, W: int) -> Optional[torch.Tensor]:
        """The held-out pseudo view rendered by the teacher at the camera ``c2w`` and size H x W, if there is one."""
        p = self.pseudo
        if (p.height, p.width) != (H, W):
            return None
        for i in p.holdout:
            if torch.allclose(p.c2w([i])[0].float(), c2w, atol=1e-4):
                return p.rgb(i).float()
        return None

    def eval_items(self, kind: str) -> EvalItems:
        items: List[Any] = [lambda i=i: self._pseudo_item(i) for i in self._pseudo_views(kind)]
        items += [lambda d=d: d for d in self._photo_items(kind)]
        return EvalItems(items)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_items("val"), batch_size=None, shuffle=False, num_workers=0)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_items("test"), batch_size=None, shuffle=False, num_workers=0)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(EvalItems([lambda: {"export": 0}]), batch_size=None, shuffle=False, num_workers=0)
