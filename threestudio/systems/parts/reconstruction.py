"""What reconstruction-style systems share besides their objective: the scene handshake with the data module, the
training clock, and the evaluation on held-out views (``nerf-reconstruction``, ``gaussian-splatting-system``).

Scene handshake: before training or loading a checkpoint, the modules receive what the data module knows about the
scene (``BaseDataModule.scene_info``: the number of training images for appearance codes, the camera layout, the
sparse points of a capture...) through ``BaseModule.set_scene``.

Training time: ``train_time_s`` (wall time of training steps only: validation passes are excluded, the GPU is
synchronised around them) is kept across resumes; every validation appends ``step, train_time_s, psnr`` (mean over
the validation views) to ``save/psnr_vs_time.csv``, the data for a PSNR-vs-time curve.

Evaluation: validation renders held-out views; the test pass renders every held-out view, writes PSNR/SSIM (and
LPIPS when ``lpips`` weights are given) to ``save/metrics.json``, the held-out views as an MP4 and a turntable.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional

import torch

from threestudio.data.base import BaseDataModule
from threestudio.ops import cameras as cam
from threestudio.systems.parts.clock import TrainingClock
from threestudio.systems.schema import (  # noqa: F401  (the first and last at their old import path)
    LPIPSConfig,
    ReconstructionConfig,
    TurntableConfig,
)
from threestudio.utils.base import BaseModule
from threestudio.utils.log import info
from threestudio.utils.metrics import psnr, ssim


class HeldOutViews(TrainingClock):
    """Mixin for ``BaseLift3DSystem``s trained on posed views (see the module docstring). Call
    :meth:`init_held_out_views` in ``configure()``."""

    cfg: ReconstructionConfig

    def init_held_out_views(self) -> None:
        self._test_metrics: List[torch.Tensor] = []
        self._test_cameras: List[Dict[str, Any]] = []
        self._val_psnr: List[torch.Tensor] = []
        self.init_clock()
        self._lpips: Any = None
        self._scene_given = False

    # ------------------------------------------------------------------ the scene, from the data
    def setup(self, stage: str) -> None:
        """Give modules with ``set_scene`` the data module's view of the scene (before a checkpoint loads)."""
        dm = self._trainer.datamodule if self._trainer is not None else None
        info = dm.scene_info if isinstance(dm, BaseDataModule) else None
        if info is None or self._scene_given:
            return  # once per system: a later pass (test, export) must not re-initialise trained modules
        self._scene_given = True
        scene: Dict[str, Any] = dict(info)
        scene["datamodule"] = dm  # for modules that need more (sparse points, cameras): read lazily
        for module in (self.geometry, self.material, self.background, self.renderer):
            if isinstance(module, BaseModule):
                module.set_scene(scene)
        self.on_scene(scene)

    def on_scene(self, scene: Dict[str, Any]) -> None:
        """Systems' hook after the modules got the scene."""

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._val_psnr = []
        self.pause_clock()

    def on_validation_epoch_end(self) -> None:
        t = self.resume_clock()
        if t is not None and self._val_psnr:
            self._append_curve(self.true_global_step, t, float(torch.stack(self._val_psnr).mean()))
        self._val_psnr = []

    def _append_curve(self, step: int, train_time: float, value: float) -> None:
        if not self._is_writer:
            return
        path = self.get_save_path("psnr_vs_time.csv")
        new = not os.path.isfile(path)
        with open(path, "a", encoding="utf-8") as f:
            if new:
                f.write("step,train_time_s,psnr\n")
            f.write(f"{step},{train_time:.3f},{value:.4f}\n")

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
            value = psnr(out["comp_rgb"].clamp(0, 1), gt)
            self._val_psnr.append(value.detach())
            self.log("val/psnr", value, prog_bar=True, batch_size=1, sync_dist=True)
        self.save_image_grid(f"it{self.true_global_step}-val/{int(batch['index'])}.png", self._grid(out, gt))

    def on_test_epoch_start(self) -> None:
        self._test_metrics = []
        self._test_cameras = []
        if self._lpips is None:
            from threestudio.utils.lpips import load_lpips

            self._lpips = load_lpips(self.cfg.lpips, key="system.lpips")
            if self._lpips is not None:
                self._lpips = self._lpips.to(self.device)

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        out = self._render_view(batch)
        gt = batch["rgb"][0] if "rgb" in batch else None
        if gt is not None:
            pred = out["comp_rgb"].clamp(0, 1)
            values = [psnr(pred, gt), ssim(pred, gt)]
            if self._lpips is not None:
                with torch.no_grad():
                    values.append(self._lpips(pred, gt).to(values[0]))
            self._test_metrics.append(torch.stack(values))
        self._test_cameras.append({"c2w": batch["c2w"][0].detach().cpu(), "fovy_deg": _fovy_deg(batch),
                                   "height": int(batch["height"]), "width": int(batch["width"])})
        step, i = self.true_global_step, int(batch["index"])
        self.save_image_grid(f"it{step}-test/{i}.png", self._grid(out, gt))
        self.save_image(f"it{step}-test-rgb/{i}.png", out["comp_rgb"].clamp(0, 1))

    def on_test_epoch_end(self) -> None:
        step = self.true_global_step
        if self._test_metrics:
            gathered = torch.stack(self._test_metrics)  # every rank renders every view (see launcher)
            means = gathered.mean(0).tolist()
            metrics: Dict[str, Any] = {"test/psnr": means[0], "test/ssim": means[1]}
            if len(means) > 2:
                metrics["test/lpips"] = means[2]
            for k, v in metrics.items():
                self.log(k, v, rank_zero_only=True)
            self.update_metrics({**metrics, "test/n_views": int(gathered.shape[0]), "step": step,
                                 "train_time_s": round(self.train_time(), 2)})
            extra = f", LPIPS {means[2]:.4f}" if len(means) > 2 else ""
            info(f"Held-out views: PSNR {means[0]:.2f} dB, SSIM {means[1]:.4f}{extra} ({gathered.shape[0]} views, "
                 f"{self.train_time():.1f} s of training)")
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
