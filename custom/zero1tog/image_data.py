"""``zero1tog-image``: the data module of an inference run (``configs/image-to-gaussians.yaml``). It yields one item
for the test pass; the system reads, checks and preprocesses ``system.image`` itself (so a missing file is reported
before the trial folder is made). It reads no training data."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch.utils.data import DataLoader, Dataset

import threestudio
from threestudio.data.base import BaseDataModule

from .schema import ImageDataModuleConfig


class _One(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return {"index": torch.tensor(i)}


@threestudio.register("zero1tog-image")
class ImageDataModule(BaseDataModule):
    Config = ImageDataModuleConfig
    cfg: Config

    def __init__(self, cfg: Optional[Any] = None) -> None:
        super().__init__(cfg)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_One(), batch_size=None, num_workers=0)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
