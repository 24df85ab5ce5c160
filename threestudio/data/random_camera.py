"""``random-camera``: random cameras around the origin for text-to-3D, with turntables for validation and test.

Training batches are drawn when a step consumes them (see :mod:`threestudio.data.base`), from this module's own
generator, so resumed runs see the same cameras. ``height``/``width``/``batch_size`` may be lists that switch at
``resolution_milestones`` (progressive resolution).

Batch keys: ``rays_o``, ``rays_d`` [B, H, W, 3]; ``mvp_mtx``, ``proj_mtx``, ``c2w`` [B, 4, 4]; ``camera_positions``,
``light_positions`` [B, 3]; ``elevation``, ``azimuth``, ``camera_distances``, ``fovy`` (degrees, fovy in radians as
``fovy_rad``) [B]; ``height``, ``width`` (ints); eval batches also ``index``.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import threestudio
from threestudio.data.base import BaseDataModule
from threestudio.data.schema import RandomCameraConfig, RandomCameraDataModuleConfig
from threestudio.ops import cameras as cam
from threestudio.utils.misc import tensors_to_device


def _as_list(x: Any) -> List[int]:
    return [int(v) for v in x] if isinstance(x, (list, tuple)) or hasattr(x, "__len__") else [int(x)]


def _build(c2w: torch.Tensor, fovy_rad: torch.Tensor, height: int, width: int, near: float = 0.01,
           far: float = 100.0) -> Dict[str, torch.Tensor]:
    focal = 0.5 * height / torch.tan(0.5 * fovy_rad)  # [B]
    dirs = cam.get_ray_directions(height, width, 1.0)  # focal 1: scale per camera below
    dirs = torch.stack([dirs[..., 0][None] / focal[:, None, None], dirs[..., 1][None] / focal[:, None, None],
                        dirs[..., 2][None].expand(c2w.shape[0], -1, -1)], dim=-1)
    rays_o, rays_d = cam.get_rays(dirs, c2w, normalize=True)
    proj = cam.perspective_projection(fovy_rad, width / height, near, far)
    return {"rays_o": rays_o, "rays_d": rays_d, "proj_mtx": proj, "mvp_mtx": cam.mvp_matrix(c2w, proj)}


class TurntableDataset(Dataset):
    def __init__(self, cfg: RandomCameraConfig, n_views: int) -> None:
        self.cfg = cfg
        self.n_views = n_views
        tt = cam.turntable(n_views, cfg.eval_elevation_deg, cfg.eval_camera_distance, cfg.eval_fovy_deg,
                           start_azimuth_deg=-180.0 if n_views > 1 else 0.0)
        self.tt = tt

    def __len__(self) -> int:
        return self.n_views

    def __getitem__(self, i: int) -> Dict[str, Any]:
        tt = self.tt
        c2w = tt["c2w"][i : i + 1]
        fovy = tt["fovy"][i : i + 1]
        batch = _build(c2w, fovy, self.cfg.eval_height, self.cfg.eval_width)
        pos = tt["camera_positions"][i : i + 1]
        return {
            **{k: v for k, v in batch.items()},
            "c2w": c2w, "camera_positions": pos, "light_positions": pos,
            "elevation": tt["elevation_deg"][i : i + 1], "azimuth": tt["azimuth_deg"][i : i + 1],
            "camera_distances": tt["camera_distances"][i : i + 1], "fovy": tt["fovy_deg"][i : i + 1],
            "fovy_rad": fovy, "height": self.cfg.eval_height, "width": self.cfg.eval_width, "index": i,
        }


def sample_light_positions(position: torch.Tensor, cfg: Any, g: torch.Generator) -> torch.Tensor:
    """[B, 3] point lights for cameras at ``position`` [B, 3]: at a distance in ``cfg.light_distance_range``, around
    the camera direction (``dreamfusion``: perturbed by ``light_position_perturb``; ``magic3d``: in a cone, elevation
    in [pi/6, pi/2] of the camera's local frame)."""
    b = position.shape[0]
    light_distance = cam.sample_uniform(b, cfg.light_distance_range, g)
    if cfg.light_sample_strategy == "dreamfusion":
        light_dir = F.normalize(position + torch.randn(b, 3, generator=g) * cfg.light_position_perturb, dim=-1)
        return light_dir * light_distance[:, None]
    forward = F.normalize(position, dim=-1)
    local_z = torch.tensor([0.0, 0.0, 1.0]).expand(b, 3)
    right = F.normalize(torch.cross(forward, local_z, dim=-1), dim=-1)
    up_l = F.normalize(torch.cross(right, forward, dim=-1), dim=-1)
    azim_l = torch.rand(b, generator=g) * 2 * math.pi - math.pi
    elev_l = torch.rand(b, generator=g) * math.pi / 3 + math.pi / 6
    local = torch.stack([torch.cos(elev_l) * torch.cos(azim_l), torch.cos(elev_l) * torch.sin(azim_l),
                         torch.sin(elev_l)], dim=-1)
    rot = torch.stack([right, up_l, forward], dim=-1)  # local (x, y, z) -> world
    return torch.einsum("bij,bj->bi", rot, local) * light_distance[:, None]


def collate_single(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    assert len(items) == 1
    return items[0]


@threestudio.register("random-camera")
class RandomCameraDataModule(BaseDataModule):
    Config = RandomCameraDataModuleConfig
    cfg: Config

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        heights, widths, sizes = _as_list(self.cfg.height), _as_list(self.cfg.width), _as_list(self.cfg.batch_size)
        n = max(len(heights), len(widths), len(sizes))
        if any(len(x) not in (1, n) for x in (heights, widths, sizes)) or len(self.cfg.resolution_milestones) != n - 1:
            raise ValueError(
                f"data: height {heights}, width {widths} and batch_size {sizes} must be single values or lists of one "
                f"length n, with n - 1 resolution_milestones (got {list(self.cfg.resolution_milestones)})")
        self.heights = heights * n if len(heights) == 1 else heights
        self.widths = widths * n if len(widths) == 1 else widths
        self.batch_sizes = sizes * n if len(sizes) == 1 else sizes
        if self.cfg.light_sample_strategy not in ("dreamfusion", "magic3d"):
            raise ValueError(f"data.light_sample_strategy: unknown {self.cfg.light_sample_strategy!r} "
                             f"(dreamfusion or magic3d)")
        self.stage = 0
        self.progress = 1.0

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.stage = bisect.bisect_right(list(self.cfg.resolution_milestones), global_step)
        if self.cfg.progressive_until > 0:
            self.progress = min(1.0, global_step / self.cfg.progressive_until)

    @property
    def height(self) -> int:
        return self.heights[self.stage]

    @property
    def width(self) -> int:
        return self.widths[self.stage]

    @property
    def batch_size(self) -> int:
        return self.batch_sizes[self.stage]

    def _ranges(self) -> Tuple[Tuple[float, float], Tuple[float, float]]:
        cfg = self.cfg
        if self.progress >= 1.0:
            return tuple(cfg.elevation_range), tuple(cfg.azimuth_range)  # type: ignore[return-value]
        p = self.progress
        e0 = cfg.eval_elevation_deg
        elev = (e0 + (cfg.elevation_range[0] - e0) * p, e0 + (cfg.elevation_range[1] - e0) * p)
        azim = (cfg.azimuth_range[0] * p, cfg.azimuth_range[1] * p)
        return elev, azim

    def draw_train_batch(self, device: torch.device) -> Dict[str, Any]:
        cfg, g, b = self.cfg, self.stream.generator, self.batch_size
        elev_range, azim_range = self._ranges()
        elevation = cam.sample_elevation(b, elev_range, g).clamp(-89.9, 89.9)
        azimuth = cam.sample_azimuth(b, azim_range, g, stratified=cfg.batch_uniform_azimuth)
        distance = cam.sample_uniform(b, cfg.camera_distance_range, g)
        fovy_deg = cam.sample_uniform(b, cfg.fovy_range, g)
        position = cam.spherical_to_position(elevation, azimuth, distance)
        position = position + (torch.rand(b, 3, generator=g) * 2 - 1) * cfg.camera_perturb
        center = torch.randn(b, 3, generator=g) * cfg.center_perturb
        up = torch.tensor([0.0, 0.0, 1.0]) + torch.randn(b, 3, generator=g) * cfg.up_perturb
        c2w = cam.look_at(position, center, up)
        light_positions = sample_light_positions(position, cfg, g)
        fovy = torch.deg2rad(fovy_deg)
        batch = _build(c2w, fovy, self.height, self.width)
        out: Dict[str, Any] = {
            **batch, "c2w": c2w, "camera_positions": position, "light_positions": light_positions,
            "elevation": elevation, "azimuth": azimuth, "camera_distances": distance, "fovy": fovy_deg,
            "fovy_rad": fovy,
        }
        out = tensors_to_device(out, device)  # one pinned, non-blocking copy: no wait on the running step
        out["height"], out["width"] = self.height, self.width
        return out

    def train_dataloader(self) -> DataLoader:
        return self.train_request_loader()

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TurntableDataset(self.cfg, self.cfg.n_val_views), batch_size=1, collate_fn=collate_single)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(TurntableDataset(self.cfg, self.cfg.n_test_views), batch_size=1, collate_fn=collate_single)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
