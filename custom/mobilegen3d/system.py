"""``nelf-student-system``: distil a teacher's pseudo views into a NeLF student (MobileR2L), evaluate, export ONNX.

One step: ``batch_size`` pseudo views -> their low-resolution rays -> the student (points perturbed within their
bins) -> MSE to the teacher's pixels (``system.loss.lambda_rgb``, 1 by default). Mixed precision comes from the
trainer (``trainer.precision: 16-mixed`` or ``bf16-mixed`` on CUDA; ray sampling and the encoding stay float32);
CPU runs use float32.

Learning rate (``lr_schedule``, MobileR2L's ``_scheduel_lr`` with ``--warmup_lr``): linear from ``warmup_from`` to
the optimizer's rate over ``warmup_steps`` steps, then ``lr * decay_rate ** ((step - warmup_steps) / (lrate_decay *
1000))``, as a per-step ``LambdaLR`` (set ``lr_schedule.enabled: false`` to use ``system.scheduler`` instead).

Evaluation: validation renders the held-out pseudo views (PSNR vs the teacher: ``val/psnr``) and, with photos in the
data, the held-out real photos (``val/psnr_photos``); every validation appends ``step, train_time_s, psnr[,
psnr_photos]`` to ``save/psnr_vs_time.csv``. The test pass writes ``save/it<step>-test/<i>.png`` (teacher | student
| error), the student's frames and ``save/it<step>-test.mp4``, photo comparisons in ``it<step>-test-photos/``, and
PSNR/SSIM (vs the teacher, vs photos), the frame time and the training time in ``save/metrics.json``. ``--export``
writes ``save/it<step>-export/`` (:mod:`.export`): student.onnx, sampler.onnx, embedder.onnx, nelf_full.onnx,
intrinsics.json.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List

import torch
import torch.nn.functional as F

import threestudio
from threestudio.systems.base import BaseSystem
from threestudio.systems.parts.clock import TrainingClock
from threestudio.utils.log import info, warn
from threestudio.utils.metrics import psnr, ssim

from .data import NeLFPseudoDataModule
from .nelf import NeLFStudent, count_parameters, student_macs
from .schema import (  # noqa: F401  (the first two at their old import path)
    ExportConfig,
    LRScheduleConfig,
    NeLFStudentSystemConfig,
)


class MobileR2LSchedule:
    """The learning-rate factor of :class:`LRScheduleConfig` for a group whose rate is ``base_lr`` (picklable, so
    LambdaLR's state dict keeps it)."""

    def __init__(self, base_lr: float, warmup_from: float, warmup_steps: int, decay_rate: float,
                 lrate_decay: float) -> None:
        self.base_lr, self.warmup_from, self.warmup_steps = float(base_lr), float(warmup_from), int(warmup_steps)
        self.decay_rate, self.decay_steps = float(decay_rate), float(lrate_decay) * 1000.0

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_from + (self.base_lr - self.warmup_from) * step / self.warmup_steps
        return self.base_lr * self.decay_rate ** ((step - self.warmup_steps) / self.decay_steps)

    def __call__(self, step: int) -> float:
        return self.lr(step) / self.base_lr if self.base_lr > 0 else 0.0


@threestudio.register("nelf-student-system")
class NeLFStudentSystem(TrainingClock, BaseSystem):
    Config = NeLFStudentSystemConfig
    cfg: Config

    def configure(self) -> None:
        self.student = NeLFStudent(self.cfg.student)
        self._eval: Dict[str, List[torch.Tensor]] = {}
        self._frame_times: List[float] = []
        self.init_clock()
        self._has_photos = False

    # ------------------------------------------------------------------ the camera, from the pseudo data
    def setup(self, stage: str) -> None:
        dm = self._trainer.datamodule if self._trainer is not None else None
        if not isinstance(dm, NeLFPseudoDataModule):
            return
        self._has_photos = bool(dm.has_photos)
        if stage == "predict" and self.student.has_camera:
            return  # exporting a checkpoint: its camera is the one
        cam = dm.camera()
        if cam["upsample"] != self.student.upsample:
            from threestudio.data.multiview import DatasetError

            raise DatasetError(
                f"the pseudo data in {dm.cfg.dataroot} is {cam['upsample']}x its ray grid ({cam['width']}x"
                f"{cam['height']} from {cam['lr_width']}x{cam['lr_height']}), but the student upsamples "
                f"{self.student.upsample}x (system.student.sr_channels has {len(self.cfg.student.sr_channels)} "
                f"stages): render the pseudo data with lr = H / {self.student.upsample}, or change sr_channels.")
        if not self.student.has_camera:
            self.student.set_camera(cam["lr_height"], cam["lr_width"], cam["lr_intrinsics"], cam["near"], cam["far"])
            return
        mine = self.student.camera_info()
        same = (mine["lr_height"], mine["lr_width"]) == (cam["lr_height"], cam["lr_width"]) and all(
            abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(mine["lr_intrinsics"] + [mine["near"], mine["far"]],
                                                                   cam["lr_intrinsics"] + [cam["near"], cam["far"]]))
        if not same:
            warn(f"the checkpoint's student camera ({mine}) differs from the pseudo data's ({cam}); the checkpoint's "
                 f"is used.")

    def on_fit_start(self) -> None:
        super().on_fit_start()
        cam = self.student.camera_info()
        info(f"NeLF student: {count_parameters(self.student) / 1e6:.2f} M parameters, "
             f"{student_macs(self.cfg.student, cam['lr_height'], cam['lr_width']) / 1e9:.2f} GMACs per "
             f"{cam['width']}x{cam['height']} frame ({cam['lr_width']}x{cam['lr_height']} rays, "
             f"{self.cfg.student.n_samples} samples in [{cam['near']:.3g}, {cam['far']:.3g}], "
             f"scale {cam['scale']:.3g}).")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):  # type: ignore[override]
        ret = super().configure_optimizers()
        sch = self.cfg.lr_schedule
        if sch.enabled and self.cfg.scheduler is None:
            opt = ret["optimizer"]
            lambdas = [MobileR2LSchedule(g["lr"], sch.warmup_from, sch.warmup_steps, sch.decay_rate, sch.lrate_decay)
                       for g in opt.param_groups]
            ret["lr_scheduler"] = {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambdas), "interval": "step"}
        elif sch.enabled and self.cfg.scheduler is not None:
            warn("system.scheduler is set, so system.lr_schedule (MobileR2L's warm-up and decay) is not used.")
        return ret

    def forward(self, batch: Dict[str, Any], perturb: bool = False) -> torch.Tensor:
        return self.student.forward_rays(batch["rays_o"], batch["rays_d"], perturb=perturb)

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        rgb = self(batch, perturb=self.cfg.perturb)
        mse = F.mse_loss(rgb.float(), batch["rgb"])
        loss = self.loss_weight("rgb", 1.0) * mse
        if self.logging_step():
            self.log_train("train/loss_rgb", mse)
            self.log_progress("train/loss", loss)
            self.log_progress("train/psnr", -10.0 * torch.log10(mse.detach().clamp_min(1e-12)))
        return loss

    # ------------------------------------------------------------------ evaluation
    def _render(self, batch: Dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            return self(batch)[0].float().clamp(0, 1)

    def _grid(self, pred: torch.Tensor, gt: torch.Tensor) -> List[Dict[str, Any]]:
        err = (pred - gt).abs().mean(-1)
        return [{"type": "rgb", "img": gt}, {"type": "rgb", "img": pred},
                {"type": "grayscale", "img": err, "kwargs": {"data_range": (0.0, 0.25), "cmap": "jet"}}]

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._eval = {}
        self.pause_clock()

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        kind = batch["kind"]
        pred, gt = self._render(batch), batch["rgb"][0].float()
        value = psnr(pred, gt)
        self._eval.setdefault(kind, []).append(value.detach())
        key = "val/psnr" if kind == "pseudo" else "val/psnr_photos"
        self.log(key, value, prog_bar=True, batch_size=1, sync_dist=True)
        if len(self._eval[kind]) <= self.cfg.n_val_images:
            self.save_image_grid(f"it{self.true_global_step}-val/{kind}-{int(batch['index'])}.png",
                                 self._grid(pred, gt))

    def on_validation_epoch_end(self) -> None:
        t = self.resume_clock()
        if t is None:
            return
        means = {k: float(torch.stack(v).mean()) for k, v in self._eval.items() if v}
        if "pseudo" in means and self._is_writer:
            path = self.get_save_path("psnr_vs_time.csv")
            new = not os.path.isfile(path)
            with open(path, "a", encoding="utf-8") as f:
                if new:
                    f.write("step,train_time_s,psnr" + (",psnr_photos" if self._has_photos else "") + "\n")
                row = f"{self.true_global_step},{t:.3f},{means['pseudo']:.4f}"
                if self._has_photos:
                    row += f",{means['photo']:.4f}" if "photo" in means else ","
                f.write(row + "\n")

    def on_test_epoch_start(self) -> None:
        self._eval = {}
        self._frame_times = []

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        kind, i = batch["kind"], int(batch["index"])
        self._sync()
        t0 = time.perf_counter()
        pred = self._render(batch)
        self._sync()
        self._frame_times.append(time.perf_counter() - t0)
        gt = batch["rgb"][0].float()
        self._eval.setdefault(kind, []).append(torch.stack([psnr(pred, gt), ssim(pred, gt).to(pred)]))
        step = self.true_global_step
        if kind == "pseudo":
            self.save_image_grid(f"it{step}-test/{i}.png", self._grid(pred, gt))
            self.save_image(f"it{step}-test-rgb/{i}.png", pred)
        else:
            self.save_image_grid(f"it{step}-test-photos/{i}.png", self._grid(pred, gt))
            if "teacher_rgb" in batch:
                teacher = batch["teacher_rgb"][0].float().to(gt)
                self._eval.setdefault("photo_teacher", []).append(
                    torch.stack([psnr(teacher, gt), ssim(teacher, gt).to(gt)]))

    def on_test_epoch_end(self) -> None:
        step = self.true_global_step
        metrics: Dict[str, Any] = {"step": step, "train_time_s": round(self.train_time(), 2)}
        names = {"pseudo": "", "photo": "_photos", "photo_teacher": "_photos_teacher"}
        for kind, values in self._eval.items():
            m = torch.stack(values).mean(0).tolist()
            metrics[f"test/psnr{names[kind]}"] = m[0]
            metrics[f"test/ssim{names[kind]}"] = m[1]
            metrics[f"test/n_views{names[kind]}"] = len(values)
            self.log(f"test/psnr{names[kind]}", m[0], rank_zero_only=True)
        if self._frame_times:
            times = sorted(self._frame_times[1:] or self._frame_times)  # the first frame warms up
            metrics["test/frame_ms_torch"] = round(1000.0 * times[len(times) // 2], 3)
            metrics["test/frame_device"] = str(self.device)
        metrics["student/n_parameters"] = count_parameters(self.student)
        self.update_metrics(metrics)
        parts = [f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith(("test/psnr", "test/ssim"))]
        info(f"NeLF student at step {step}: {', '.join(parts)}")
        if "pseudo" in self._eval and self._is_writer:
            self.save_img_sequence(f"it{step}-test", f"it{step}-test-rgb", r"(\d+)\.png", save_format="mp4",
                                   fps=self.cfg.video_fps)

    # ------------------------------------------------------------------ export
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and self._is_writer:
            self.export()

    def export(self) -> Dict[str, str]:
        from .export import export_onnx

        if not self.student.has_camera:
            raise RuntimeError("the student has no camera: export a trained checkpoint (--export --resume <trial>).")
        c = self.cfg.export
        out = self.get_save_path(f"it{self.true_global_step}-export/intrinsics.json")
        written = export_onnx(self.student, os.path.dirname(out), opset=c.opset, parts=list(c.parts),
                              verify=c.verify, extra_info={"step": self.true_global_step})
        info(f"Exported ONNX: {', '.join(os.path.relpath(p, self.get_save_dir()) for p in written.values())}")
        return written
