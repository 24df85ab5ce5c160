"""``nerf-reconstruction``: fit a scene to posed images with a photometric loss.

One step: a batch of random rays with their pixel colours -> render -> MSE (+ optional mask, eikonal, sparsity
terms). Validation renders a held-out view; the test pass renders every held-out view, writes PSNR/SSIM to
``save/metrics.json`` and a turntable MP4; ``--export`` writes a textured mesh through the exporter.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

import threestudio
from threestudio.ops import cameras as cam
from threestudio.systems.base import BaseLift3DSystem
from threestudio.utils.log import info
from threestudio.utils.metrics import psnr, ssim


@dataclass
class TurntableConfig:
    n_views: int = 60
    fps: int = 30
    elevation_deg: Optional[float] = None  # None: the mean elevation of the test cameras
    distance: Optional[float] = None  # None: their mean distance from the origin
    fovy_deg: Optional[float] = None  # None: their mean vertical field of view


@threestudio.register("nerf-reconstruction")
class NeRFReconstruction(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        turntable: TurntableConfig = field(default_factory=TurntableConfig)
        exporter_type: str = "mesh-exporter"

    cfg: Config

    def configure(self) -> None:
        super().configure()
        self._test_metrics: List[torch.Tensor] = []
        self._test_cameras: List[Dict[str, torch.Tensor]] = []
        self._t_start = time.time()

    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        return self.renderer(batch["rays_o"], batch["rays_d"], light_positions=batch.get("light_positions"),
                             bg_color=batch.get("bg_color"))

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        loss_terms: Dict[str, torch.Tensor] = {"rgb": F.mse_loss(out["comp_rgb"], batch["rgb"])}
        if self.loss_weight("mask") > 0 and "mask" in batch:
            op = out["opacity"].clamp(1e-4, 1 - 1e-4)
            loss_terms["mask"] = F.binary_cross_entropy(op, batch["mask"].float())
        if self.loss_weight("eikonal") > 0 and "sdf_grad" in out:
            loss_terms["eikonal"] = ((out["sdf_grad"].norm(dim=-1) - 1.0) ** 2).mean()
        if self.loss_weight("sparsity") > 0:
            loss_terms["sparsity"] = (out["opacity"] ** 2 + 0.01).sqrt().mean()
        loss = torch.zeros((), device=out["comp_rgb"].device)
        detail = self.logging_step()  # per-step tensor logs would read the GPU back every step
        for name, value in loss_terms.items():
            weight = self.loss_weight(name, 1.0 if name == "rgb" else 0.0)
            loss = loss + weight * value
            if detail:
                self.log_train(f"train/loss_{name}", value)
        if detail:
            self.log_progress("train/loss", loss)
            self.log_progress("train/psnr", psnr(out["comp_rgb"].detach(), batch["rgb"]))
        return loss

    # ------------------------------------------------------------------ evaluation
    def _render_view(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        with torch.no_grad():
            out = self(batch)
        return {k: v[0] for k, v in out.items() if torch.is_tensor(v) and v.dim() == 4}

    def _grid(self, out: Dict[str, torch.Tensor], gt: Optional[torch.Tensor]) -> List[Dict[str, Any]]:
        items: List[Dict[str, Any]] = []
        if gt is not None:
            items.append({"type": "rgb", "img": gt})
        items.append({"type": "rgb", "img": out["comp_rgb"]})
        if "comp_normal" in out:
            items.append({"type": "rgb", "img": out["comp_normal"] * 0.5 + 0.5})
        items.append({"type": "grayscale", "img": out["opacity"][..., 0]})
        items.append({"type": "grayscale", "img": out["depth"][..., 0], "kwargs": {"data_range": None, "cmap": "jet"}})
        return items

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        out = self._render_view(batch)
        gt = batch["rgb"][0] if "rgb" in batch else None
        if gt is not None:
            self.log("val/psnr", psnr(out["comp_rgb"], gt), prog_bar=True, batch_size=1, sync_dist=True)
        self.save_image_grid(f"it{self.true_global_step}-val/{int(batch['index'])}.png", self._grid(out, gt))

    def on_test_epoch_start(self) -> None:
        self._test_metrics = []
        self._test_cameras = []

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        out = self._render_view(batch)
        gt = batch["rgb"][0] if "rgb" in batch else None
        if gt is not None:
            pred = out["comp_rgb"].clamp(0, 1)
            self._test_metrics.append(torch.stack([psnr(pred, gt), ssim(pred, gt)]))
        self._test_cameras.append({"c2w": batch["c2w"][0].detach().cpu(), "fovy_deg": _fovy_deg(batch),
                                   "height": int(batch["height"]), "width": int(batch["width"])})
        step, i = self.true_global_step, int(batch["index"])
        self.save_image_grid(f"it{step}-test/{i}.png", self._grid(out, gt))
        self.save_image(f"it{step}-test-rgb/{i}.png", out["comp_rgb"].clamp(0, 1))

    def on_test_epoch_end(self) -> None:
        step = self.true_global_step
        if self._test_metrics:
            gathered = torch.stack(self._test_metrics)  # every rank renders every view (see launcher)
            mean_psnr, mean_ssim = gathered.mean(0).tolist()
            self.log("test/psnr", mean_psnr, rank_zero_only=True)
            self.log("test/ssim", mean_ssim, rank_zero_only=True)
            self.update_metrics({"test/psnr": mean_psnr, "test/ssim": mean_ssim, "test/n_views": int(gathered.shape[0]),
                                 "step": step, "train_wall_time_s": round(time.time() - self._t_start, 2)})
            info(f"Held-out views: PSNR {mean_psnr:.2f} dB, SSIM {mean_ssim:.4f} ({gathered.shape[0]} views)")
        # the held-out views as a video (for the quick start's scene they are a turntable)
        self.save_img_sequence(f"it{step}-test", f"it{step}-test-rgb", r"(\d+)\.png", save_format="mp4", fps=10)
        if self.cfg.turntable.n_views > 0 and self._test_cameras:
            self._render_turntable(step)

    def _render_turntable(self, step: int) -> None:
        cfg = self.cfg.turntable
        cams = self._test_cameras
        pos = torch.stack([c["c2w"][:3, 3] for c in cams])
        dist = cfg.distance if cfg.distance is not None else float(pos.norm(dim=-1).mean())
        elev = cfg.elevation_deg if cfg.elevation_deg is not None else float(
            torch.rad2deg(torch.asin((pos[:, 2] / pos.norm(dim=-1)).clamp(-1, 1))).mean())
        fovy = cfg.fovy_deg if cfg.fovy_deg is not None else sum(c["fovy_deg"] for c in cams) / len(cams)
        h, w = cams[0]["height"], cams[0]["width"]
        tt = cam.turntable(cfg.n_views, elev, dist, fovy)
        frames = []
        for i in range(cfg.n_views):
            c2w = tt["c2w"][i : i + 1]
            focal = 0.5 * h / math.tan(0.5 * math.radians(fovy))
            dirs = cam.get_ray_directions(h, w, focal)
            rays_o, rays_d = cam.get_rays(dirs, c2w)
            out = self._render_view({"rays_o": rays_o.to(self.device), "rays_d": rays_d.to(self.device)})
            frames.append(out["comp_rgb"].clamp(0, 1).cpu())
        self.save_video(f"it{step}-turntable.mp4", frames, fps=cfg.fps)


def _fovy_deg(batch: Dict[str, Any]) -> float:
    """Vertical field of view in degrees from a batch (``fovy_rad`` in radians, else ``fovy`` in degrees)."""
    if "fovy_rad" in batch:
        return math.degrees(float(torch.as_tensor(batch["fovy_rad"]).reshape(-1)[0]))
    return float(torch.as_tensor(batch["fovy"]).reshape(-1)[0])
