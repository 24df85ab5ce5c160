"""``zero1tog-splatter-data``: objects made by ``scripts/make_gt_splatters.py`` (layout in :mod:`.store`) as
batches for a splatter-image diffusion model.

The last ``n_val_objects`` objects (by name) are held out for validation and testing; the rest are split over ranks
(rank r takes every world_size-th object).

Train batch (``batch_size`` objects of this rank's shard drawn with the module's saved generator, with
replacement), every image composited on ``background``:

* ``cond_rgb`` [B, 3, h, w]: the input view (in the wonder3d view set it is splatter view 0); ``cond_c2w`` [B, 4, 4]
* ``splatter`` [B, V, 14, H, W] (activated) and ``attributes`` [B, 5, V, 3, H, W] in [-1, 1] (``mapping``)
* ``views_rgb`` [B, V, 3, h, w], ``views_alpha`` [B, V, 1, h, w], ``views_c2w`` [B, V, 4, 4]: the splatter views
* ``sup_rgb``, ``sup_alpha``, ``sup_c2w``: ``n_supervision_views`` of the object's extra cameras (drawn at random),
  for a rendering loss; absent when 0
* ``fovy`` [B] (radians), ``index`` [B] (long)

Validation / test items (one held-out object each, batch dimension 1): the same keys with all extra views as
``sup_*``, plus ``heldout_rgb``, ``heldout_alpha``, ``heldout_c2w`` (cameras the fit never saw) and ``name``.
All cameras are OpenGL c2w in the object frame (:mod:`.views`); :func:`.splatter.render_splatter` renders them.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

import threestudio
from threestudio.data.base import BaseDataModule, rank_and_world

from . import store
from .schema import SplatterDataModuleConfig
from .splatter import N_CHANNELS, splatter_to_attribute_images


def _resolve(root: str) -> str:
    if os.path.isabs(root) or os.path.exists(root):
        return root
    from threestudio.utils.extensions import REPO_ROOT

    return os.path.join(REPO_ROOT, root)


class _Items(Dataset):
    def __init__(self, dm: "SplatterDataModule", indices: List[int]) -> None:
        self.dm, self.indices = dm, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return self.dm.eval_item(self.indices[i])


@threestudio.register("zero1tog-splatter-data")
class SplatterDataModule(BaseDataModule):
    Config = SplatterDataModuleConfig
    cfg: Config

    def __init__(self, cfg: Optional[Any] = None) -> None:
        super().__init__(cfg)
        self.root = _resolve(self.cfg.dataroot)
        self.names = store.list_objects(self.root)
        if len(self.names) <= self.cfg.n_val_objects:
            raise ValueError(f"data.dataroot {self.root} holds {len(self.names)} complete objects; at least "
                             f"n_val_objects + 1 = {self.cfg.n_val_objects + 1} are needed")
        n_train = len(self.names) - self.cfg.n_val_objects
        self.train_indices = list(range(n_train))
        self.val_indices = list(range(n_train, len(self.names)))
        self._cache: Dict[int, Dict[str, Any]] = {}

    def rank_world(self) -> Tuple[int, int]:
        return rank_and_world(self.trainer, self.cfg.rank, self.cfg.world_size)

    def shard(self) -> List[int]:
        rank, world = self.rank_world()
        return self.train_indices[rank::world] or self.train_indices

    # ---- reading
    def load(self, index: int) -> Dict[str, Any]:
        if index in self._cache:
            return self._cache[index]
        obj = store.read_object(os.path.join(self.root, self.names[index]))
        sp = obj["splatter"]
        if sp.dim() != 4 or sp.shape[1] != N_CHANNELS:
            raise ValueError(f"{self.names[index]}: splatter.safetensors holds {list(sp.shape)}, expected "
                             f"[V, {N_CHANNELS}, H, W]")
        obj["attributes"] = splatter_to_attribute_images(sp, self.cfg.mapping)
        if self.cfg.cache:
            self._cache[index] = obj
        return obj

    def _rgb_alpha(self, rgba: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        bg = torch.as_tensor(self.cfg.background, dtype=rgba.dtype)
        a = rgba[..., 3:]
        rgb = rgba[..., :3] * a + bg * (1.0 - a)
        return rgb.permute(0, 3, 1, 2).contiguous(), a.permute(0, 3, 1, 2).contiguous()

    def object_item(self, index: int, sup: Optional[torch.Tensor]) -> Dict[str, Any]:
        obj = self.load(index)
        cond_rgb, _ = self._rgb_alpha(obj["rgba"]["input"])
        views_rgb, views_alpha = self._rgb_alpha(obj["rgba"]["splatter"])
        item = {"cond_rgb": cond_rgb[0], "cond_c2w": obj["c2w"]["input"][0], "splatter": obj["splatter"],
                "attributes": obj["attributes"], "views_rgb": views_rgb, "views_alpha": views_alpha,
                "views_c2w": obj["c2w"]["splatter"],
                "fovy": torch.tensor(float(obj["cameras"]["fovy_deg"])).deg2rad(), "index": torch.tensor(index)}
        if sup is not None:
            rgb, alpha = self._rgb_alpha(obj["rgba"]["extra"][sup])
            item.update(sup_rgb=rgb, sup_alpha=alpha, sup_c2w=obj["c2w"]["extra"][sup])
        return item

    # ---- training
    def draw_train_batch(self, device: torch.device) -> Dict[str, Any]:
        g = self.stream.generator
        shard = self.shard()
        pick = torch.randint(len(shard), (self.cfg.batch_size,), generator=g)
        items = []
        for j in pick.tolist():
            idx = shard[j]
            sup = None
            k = self.cfg.n_supervision_views
            if k > 0:
                n_extra = self.load(idx)["c2w"]["extra"].shape[0]
                if n_extra < k:
                    raise ValueError(f"data.n_supervision_views={k} but {self.names[idx]} has only {n_extra} extra "
                                     f"views; make the data with --n-extra {k} or more")
                sup = torch.randperm(n_extra, generator=g)[:k]
            items.append(self.object_item(idx, sup))
        batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
        return batch

    def train_dataloader(self) -> DataLoader:
        return self.train_request_loader()

    # ---- evaluation
    def eval_item(self, index: int) -> Dict[str, Any]:
        obj = self.load(index)
        item = self.object_item(index, torch.arange(obj["c2w"]["extra"].shape[0]))
        rgb, alpha = self._rgb_alpha(obj["rgba"]["heldout"])
        item.update(heldout_rgb=rgb, heldout_alpha=alpha, heldout_c2w=obj["c2w"]["heldout"])
        out: Dict[str, Any] = {k: v[None] for k, v in item.items()}
        out["name"] = self.names[index]
        return out

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Items(self, self.val_indices), batch_size=None, num_workers=0)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
