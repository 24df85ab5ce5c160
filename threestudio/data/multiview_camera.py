"""``multiview-camera``: random cameras in groups of ``n_view`` views of one object, for multi-view guidance (MVDream).

Each training batch holds ``batch_size`` views = ``batch_size / n_view`` objects, object-major (the n_view views of
object 0, then object 1, ...), which is the layout MVDream's UNet expects. Per object (as MVDream-threestudio and
ScaleDreamer draw them):

- azimuths equally spaced, ``360 / n_view`` apart, from one random offset: (u + i) / n_view over the azimuth range,
  u ~ U(0, 1), i = 0 .. n_view - 1;
- one elevation (uniform in degrees or uniform on the sphere, one coin per batch, as ``random-camera``), one fovy and
  one distance shared by its views;
- ``relative_radius``: the distance is drawn relative to the fov, distance = d / tan(fovy / 2), d ~ U(range), so the
  object fills the same part of the image whatever the fov.

Perturbations (``camera_perturb``, ``center_perturb``, ``up_perturb``) default to 0 here (MVDream's setting) and are
per view when set; lights are drawn per view as in ``random-camera``. Validation and test are ``random-camera``'s
turntables (``eval_*`` keys). Batch keys are those of ``random-camera``.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

import threestudio
from threestudio.data.random_camera import RandomCameraDataModule, _build, sample_light_positions
from threestudio.data.schema import MultiviewCameraDataModuleConfig
from threestudio.ops import cameras as cam
from threestudio.utils.misc import tensors_to_device


@threestudio.register("multiview-camera")
class MultiviewCameraDataModule(RandomCameraDataModule):
    Config = MultiviewCameraDataModuleConfig
    cfg: Config

    def __init__(self, cfg: Any = None) -> None:
        super().__init__(cfg)
        n = self.cfg.n_view
        bad = [b for b in self.batch_sizes if n < 1 or b % n]
        if bad:
            raise ValueError(f"data.batch_size {self.batch_sizes} must hold whole objects: each a multiple of "
                             f"data.n_view = {n} (a batch is batch_size / n_view objects x n_view views)")

    def draw_train_batch(self, device: torch.device) -> Dict[str, Any]:
        cfg, g = self.cfg, self.stream.generator
        n, b = cfg.n_view, self.batch_size
        k = b // n
        elev_range, azim_range = self._ranges()
        elevation = cam.sample_elevation(k, elev_range, g).clamp(-89.9, 89.9).repeat_interleave(n)
        offset = torch.rand(k, 1, generator=g)
        frac = ((offset + torch.arange(n, dtype=torch.float32)[None]) / n).reshape(-1)
        azimuth = frac * (azim_range[1] - azim_range[0]) + azim_range[0]
        fovy_deg = cam.sample_uniform(k, cfg.fovy_range, g).repeat_interleave(n)
        distance = cam.sample_uniform(k, cfg.camera_distance_range, g).repeat_interleave(n)
        fovy = torch.deg2rad(fovy_deg)
        if cfg.relative_radius:
            distance = distance / torch.tan(0.5 * fovy)
        position = cam.spherical_to_position(elevation, azimuth, distance)
        center = torch.zeros(b, 3)
        up = torch.tensor([0.0, 0.0, 1.0]).expand(b, 3)
        if cfg.camera_perturb > 0:
            position = position + (torch.rand(b, 3, generator=g) * 2 - 1) * cfg.camera_perturb
        if cfg.center_perturb > 0:
            center = torch.randn(b, 3, generator=g) * cfg.center_perturb
        if cfg.up_perturb > 0:
            up = up + torch.randn(b, 3, generator=g) * cfg.up_perturb
        c2w = cam.look_at(position, center, up)
        light_positions = sample_light_positions(position, cfg, g)
        batch = _build(c2w, fovy, self.height, self.width)
        out: Dict[str, Any] = {
            **batch, "c2w": c2w, "camera_positions": position, "light_positions": light_positions,
            "elevation": elevation, "azimuth": azimuth, "camera_distances": distance, "fovy": fovy_deg,
            "fovy_rad": fovy,
        }
        out = tensors_to_device(out, device)
        out["height"], out["width"], out["n_view"] = self.height, self.width, n
        return out
