"""``get3d-nada-datamodule``: the random draws of a NADA step (cameras, layer-selection latents).

The latents of the two phases come from the system's fixed pool; this module draws, per training step and with its
own saved generator (so a resumed run draws the same): ``azimuth``/``polar`` [batch, n_views] (the camera prior of
``data_camera_mode``; the frozen and the trained generator are rendered with these same cameras), and for layer
selection ``sel_z_tex``/``sel_z_geo`` [auto_layer_batch, z_dim] with one view each. Validation / test / export
loaders yield one placeholder batch: the system renders its fixed latents.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch.utils.data import DataLoader

import threestudio
from threestudio.data.base import BaseDataModule

from .cameras import check_mode, sample_angles
from .schema import NadaDataModuleConfig


@threestudio.register("get3d-nada-datamodule")
class NadaDataModule(BaseDataModule):
    Config = NadaDataModuleConfig
    cfg: Config

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        check_mode(self.cfg.data_camera_mode, "data.data_camera_mode")
        for k in ("batch", "n_views", "auto_layer_batch", "z_dim"):
            if getattr(self.cfg, k) < 1:
                raise ValueError(f"data.{k} must be >= 1, got {getattr(self.cfg, k)}")

    def draw_train_batch(self, device: torch.device) -> Dict[str, Any]:
        cfg, g = self.cfg, self.stream.generator
        az, polar = sample_angles((cfg.batch, cfg.n_views), cfg.data_camera_mode, g)
        saz, spolar = sample_angles((cfg.auto_layer_batch, 1), cfg.data_camera_mode, g)
        z = torch.randn(2, cfg.auto_layer_batch, cfg.z_dim, generator=g)
        return {"azimuth": az.to(device), "polar": polar.to(device), "sel_azimuth": saz.to(device),
                "sel_polar": spolar.to(device), "sel_z_tex": z[0].to(device), "sel_z_geo": z[1].to(device)}

    def train_dataloader(self) -> DataLoader:
        return self.train_request_loader()

    def _one(self) -> DataLoader:
        return DataLoader([{"index": torch.tensor(0)}], batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return self._one()

    def test_dataloader(self) -> DataLoader:
        return self._one()

    def predict_dataloader(self) -> DataLoader:
        return self._one()
