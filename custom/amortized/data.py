"""``amortized-prompt-library-camera``: batches of k prompts x v views from a prompt library, per DDP rank.

Training (drawn at consumption time from the module's saved generator, see :mod:`threestudio.data.base`): k prompts
from this rank's shard of ``train`` (without replacement, or with it when the shard has fewer than k), a latent
``noise`` [k, noise_dim] (3DConv-net's z), and cameras as in ScaleDreamer (``scaledreamer.md`` 2.2):

- ``n_view: 1`` (Stable Diffusion): one camera per prompt; distance, fovy uniform in their ranges; elevation in
  ``elevation_range`` (one coin per batch: uniform in degrees or uniform on the sphere); azimuth stratified over the
  batch; no perturbation.
- ``n_view: 4`` (MVDream): per prompt one elevation, fovy and distance, and ``n_view`` azimuths equally spaced from a
  random offset; with ``relative_radius`` the distance is scaled by 1 / tan(fovy / 2).

Rows are prompt-major: row ``i * n_view + j`` is view j of prompt i. Validation and test iterate over every prompt
of this rank's shard of ``val`` / ``test`` (the ranks together cover each split exactly once); each item is one
prompt with its whole turntable (cameras only: the system builds the rays view by view). ``test_mode: interpolate``
instead yields ``n_interp`` steps from ``interp_source`` to ``interp_target`` (embeddings are lerped).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

import threestudio
from threestudio.data.base import BaseDataModule
from threestudio.data.random_camera import collate_single
from threestudio.ops import cameras as cam
from threestudio.utils.misc import tensors_to_device

from .library import dist_rank_world, load_prompt_library, shard_indices
from .schema import CameraSettings, PromptLibraryCameraDataModuleConfig


def rays_for(c2w: torch.Tensor, fovy_rad: torch.Tensor, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(rays_o, rays_d) [B, H, W, 3] for cameras ``c2w`` [B, 4, 4] with vertical fov ``fovy_rad`` [B]."""
    focal = 0.5 * height / torch.tan(0.5 * fovy_rad)
    dirs = cam.get_ray_directions(height, width, 1.0).to(c2w.device)  # [H, W, 3], focal 1
    dirs = torch.cat([dirs[None, ..., :2] / focal[:, None, None, None], dirs[None, ..., 2:].expand(c2w.shape[0],
                                                                                                    -1, -1, -1)], -1)
    return cam.get_rays(dirs, c2w, normalize=True)


def sample_cameras(k: int, s: CameraSettings, g: torch.Generator) -> Dict[str, torch.Tensor]:
    """Cameras for k prompts x s.n_view views (prompt-major), as ScaleDreamer samples them."""
    v = s.n_view
    if v == 1:
        elev = cam.sample_elevation(k, s.elevation_range, g).clamp(-89.9, 89.9)
        azim = cam.sample_azimuth(k, s.azimuth_range, g, stratified=True)
        fovy = cam.sample_uniform(k, s.fovy_range, g)
        dist = cam.sample_uniform(k, s.camera_distance_range, g)
    else:
        elev = cam.sample_uniform(k, s.elevation_range, g).repeat_interleave(v)
        offset = cam.sample_uniform(k, s.azimuth_range, g)
        azim = (offset[:, None] + torch.arange(v, dtype=torch.float32)[None] * (360.0 / v)).reshape(-1)
        azim = torch.remainder(azim + 180.0, 360.0) - 180.0
        fovy = cam.sample_uniform(k, s.fovy_range, g).repeat_interleave(v)
        dist = cam.sample_uniform(k, s.camera_distance_range, g).repeat_interleave(v)
    if s.relative_radius:
        dist = dist / torch.tan(torch.deg2rad(fovy) / 2)
    pos = cam.spherical_to_position(elev, azim, dist)
    return {"c2w": cam.look_at(pos), "camera_positions": pos, "elevation": elev, "azimuth": azim,
            "camera_distances": dist, "fovy": fovy, "fovy_rad": torch.deg2rad(fovy)}


def turntable_cameras(n: int, s: CameraSettings) -> Dict[str, torch.Tensor]:
    tt = cam.turntable(n, s.eval_elevation_deg, s.eval_camera_distance, s.eval_fovy_deg, start_azimuth_deg=-180.0)
    return {"c2w": tt["c2w"], "camera_positions": tt["camera_positions"], "elevation": tt["elevation_deg"],
            "azimuth": tt["azimuth_deg"], "camera_distances": tt["camera_distances"], "fovy": tt["fovy_deg"],
            "fovy_rad": tt["fovy"]}


class PromptTurntables(Dataset):
    """One item per prompt of a shard: the prompt and its turntable cameras (plus the fixed test latent)."""

    def __init__(self, items: List[Dict[str, Any]], cams: Dict[str, torch.Tensor], s: CameraSettings,
                 noise: torch.Tensor) -> None:
        self.items, self.cams, self.s, self.noise = items, cams, s, noise

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return {**self.items[i], **self.cams, "noise": self.noise, "height": self.s.eval_height,
                "width": self.s.eval_width, "index": i}


@threestudio.register("amortized-prompt-library-camera")
class PromptLibraryCameraDataModule(BaseDataModule):
    Config = PromptLibraryCameraDataModuleConfig
    cfg: Config

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        c = self.cfg
        if c.prompts_per_step < 1 or c.n_view < 1:
            raise ValueError(f"data.prompts_per_step ({c.prompts_per_step}) and data.n_view ({c.n_view}) must be >= 1")
        if c.test_mode not in ("split", "interpolate"):
            raise ValueError(f"data.test_mode: unknown {c.test_mode!r} (split or interpolate)")
        if c.test_mode == "interpolate" and not (c.interp_source and c.interp_target):
            raise ValueError("data.test_mode=interpolate needs data.interp_source and data.interp_target (prompts)")
        self.path, self.library = load_prompt_library(c.prompt_library, key="data.prompt_library")
        self._shards: Optional[Dict[str, List[int]]] = None

    # ------------------------------------------------------------------ sharding
    def rank_world(self) -> Tuple[int, int]:
        c = self.cfg
        if c.rank is None and c.world_size is None and self.trainer is not None:
            return int(self.trainer.global_rank), int(self.trainer.world_size)
        return dist_rank_world(c.rank, c.world_size)

    def shard(self, split: str) -> List[int]:
        """Indices (into the split) of this rank's prompts."""
        if self._shards is None:
            rank, world = self.rank_world()
            self._shards = {s: shard_indices(len(p), rank, world) for s, p in self.library.items()}
        return self._shards[split]

    # ------------------------------------------------------------------ training batches
    def draw_train_batch(self, device: torch.device) -> Dict[str, Any]:
        c, g = self.cfg, self.stream.generator
        ids = self.shard("train")
        k = c.prompts_per_step
        if not ids:
            raise RuntimeError(f"rank {self.rank_world()[0]} has no training prompts: the train split of {self.path} "
                               f"has {len(self.library['train'])} prompts for {self.rank_world()[1]} ranks")
        pick = torch.randperm(len(ids), generator=g)[:k] if len(ids) >= k else torch.randint(len(ids), (k,),
                                                                                             generator=g)
        idx = [ids[int(i)] for i in pick]
        cams = sample_cameras(k, c, g)
        rays_o, rays_d = rays_for(cams["c2w"], cams["fovy_rad"], c.height, c.width)
        noise = torch.randn(k, c.noise_dim, generator=g)
        out: Dict[str, Any] = {**cams, "rays_o": rays_o, "rays_d": rays_d, "noise": noise,
                               "prompt_index": torch.tensor(idx, dtype=torch.long)}
        out = tensors_to_device(out, device)
        out.update({"split": "train", "prompts": [self.library["train"][i] for i in idx], "n_view": c.n_view,
                    "height": c.height, "width": c.width})
        return out

    def train_dataloader(self) -> DataLoader:
        return self.train_request_loader()

    # ------------------------------------------------------------------ evaluation
    def _eval_noise(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.eval_noise_seed)
        return torch.randn(1, self.cfg.noise_dim, generator=g)  # one fixed z, the same for every prompt

    def eval_dataset(self, split: str, n_views: int) -> PromptTurntables:
        c = self.cfg
        cams = turntable_cameras(n_views, c)
        if split == "test" and c.test_mode == "interpolate":
            alphas = torch.linspace(0.0, 1.0, max(2, c.n_interp))
            items = [{"split": "interp", "prompt": c.interp_source, "prompt_b": c.interp_target,
                      "alpha": float(a), "name": f"interp_{j:03d}"} for j, a in enumerate(alphas)]
            rank, world = self.rank_world()
            items = items[rank::world]
        else:
            items = [{"split": split, "prompt": self.library[split][i], "prompt_index": i}
                     for i in self.shard(split)]
        return PromptTurntables(items, cams, c, self._eval_noise())

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_dataset("val", self.cfg.n_val_views), batch_size=1, collate_fn=collate_single)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.eval_dataset("test", self.cfg.n_test_views), batch_size=1, collate_fn=collate_single)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
