"""``get3d-nada``: text-guided adaptation of a pretrained GET3D generator (StyleGAN-NADA's directional CLIP loss).

Training (manual optimisation, one step per batch of ``batch`` latents):

1. latents: phase 1 runs ``iter_1st`` epochs over a fixed pool of ``sample_1st`` latents (seeded by ``seed``) in
   chunks of ``batch``; its last epoch records each latent's loss. Phase 2 runs ``iter_2nd`` epochs over the
   ``n_select`` latents with the lowest loss. **Both phases step the optimizer.** ``trainer.max_steps`` must
   equal :meth:`total_steps` (the recipes compute it).
2. adaptive layer selection, redone every step (``auto_layer_k`` < number of layers): ``auto_layer_batch`` latents
   mapped by the frozen mapping networks, ``auto_layer_iters`` SGD steps (lr ``auto_layer_lr``) on their w copies
   against the global CLIP loss of the trainable generator's renders, top-k w copies by mean |dw| -> only their
   modules get gradients (``layers.py``).
3. the frozen and the trainable generator render the same latents under the **same** ``n_views`` cameras per
   latent (drawn by the data module); the CLIP directional loss (sum over ``clip_models`` weighted by
   ``clip_models_weight``, templates over ``source_text`` -> ``target_text``) is averaged over views per latent.
4. geometry: the RGB path gives no gradient to the SDF / deformation heads (texture lookups use detached
   coordinates, as GET3D). ``geometry_clip: silhouette | normal`` adds the directional loss on the antialiased
   silhouette or normal map (weight ``lambda_geometry``), which reaches the vertex positions through the
   rasterizer's antialiasing, and so the SDF, deformation and ``togeo`` layers.
5. gradients of unselected layers are None (not zero), so Adam does not move them (no stale momentum); optional
   gradient clipping by norm (``gradient_clip_threshold`` > 0; -1 = off).

Evaluation: ``--test`` renders turntables of ``n_test_latents`` fixed latents, frozen | adapted side by side
(``it<step>-test.mp4``), a latent interpolation video (``it<step>-interp.mp4``) and CLIP similarity to
``target_text`` of adapted vs frozen renders of ``eval_samples`` latents into ``metrics.json``. ``--export`` writes
``n_export`` textured meshes (OBJ + GLB, UV texture baked from the texture field) at ``truncation_psi``, plus the
adapted generator as an official-layout checkpoint (``G``, ``G_ema``) that GET3D's own code loads.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Optional

import torch

import threestudio
from threestudio.systems.base import BaseSystem
from threestudio.utils.log import info

from . import layers as L
from .cameras import mvp_from_angles, sample_angles, turntable_angles
from .generator import GET3DGenerator
from .schema import GET3DNadaConfig


def steps_per_phase(sample_1st: int, iter_1st: int, n_select: int, iter_2nd: int, batch: int):
    per1 = math.ceil(sample_1st / batch)
    per2 = math.ceil(min(n_select, sample_1st) / batch)
    return per1, iter_1st * per1, per2, iter_2nd * per2


@threestudio.register("get3d-nada")
class GET3DNada(BaseSystem):
    Config = GET3DNadaConfig
    cfg: Config

    # ------------------------------------------------------------------------------------------------ build
    def configure(self) -> None:
        cfg = self.cfg
        if cfg.geometry_clip not in ("none", "silhouette", "normal"):
            raise ValueError(f"system.geometry_clip: {cfg.geometry_clip!r} is not none, silhouette or normal")
        if cfg.batch < 1 or cfg.n_views < 1 or cfg.sample_1st < 1:
            raise ValueError("system.batch, system.n_views and system.sample_1st must be >= 1")
        self.generator = GET3DGenerator(cfg.generator)  # trainable
        self.generator_frozen = copy.deepcopy(self.generator).requires_grad_(False)
        self.n_layers = self.generator.num_ws_tex + self.generator.num_ws_geo
        g = torch.Generator().manual_seed(cfg.seed)
        zd = self.generator.cfg.z_dim
        self.register_buffer("pool_z", torch.randn(cfg.sample_1st, 2, zd, generator=g), persistent=False)
        self.register_buffer("pool_loss", torch.full((cfg.sample_1st,), float("inf")))
        self.automatic_optimization = False
        self._aux: Dict[str, Any] = {"clip": None}  # CLIP models: kept out of the module tree and checkpoints
        self.last_selected: List[int] = []

    def total_steps(self) -> int:
        c = self.cfg
        _, n1, _, n2 = steps_per_phase(c.sample_1st, c.iter_1st, c.n_select, c.iter_2nd, c.batch)
        return n1 + n2

    def batch_latents(self, step: int) -> torch.Tensor:
        """Pool indices of the latents of training step ``step`` (phase 1, then phase 2 on the best ones)."""
        c = self.cfg
        per1, n1, per2, n2 = steps_per_phase(c.sample_1st, c.iter_1st, c.n_select, c.iter_2nd, c.batch)
        if step < n1:
            j = step % per1
            return torch.arange(j * c.batch, min((j + 1) * c.batch, c.sample_1st))
        j = (step - n1) % per2
        k = min(c.n_select, c.sample_1st)
        best = torch.argsort(self.pool_loss.cpu(), stable=True)[:k]
        return best[j * c.batch:(j + 1) * c.batch]

    @property
    def clip(self) -> Any:
        return self._aux["clip"]

    def build_clip(self) -> None:
        if self._aux["clip"] is None:
            from .clip_loss import MultiCLIPLoss

            clip = MultiCLIPLoss(self.cfg.clip_models, self.cfg.clip_models_weight, self.cfg.templates)
            self._aux["clip"] = clip.to(self.device)
        elif next(self._aux["clip"].parameters()).device != self.device:
            self._aux["clip"].to(self.device)

    def load_pretrained(self) -> None:
        from .checkpoint import load_official

        if not self.cfg.checkpoint:
            raise ValueError("system.checkpoint: set it to an official GET3D checkpoint (.pt with G, G_ema, D)")
        load_official(self.cfg.checkpoint, self.generator, self.cfg.checkpoint_key)
        self.generator_frozen.load_state_dict(self.generator.state_dict())
        info(f"Loaded {self.cfg.checkpoint_key} from {self.cfg.checkpoint} into the frozen and trainable generator")

    def configure_optimizers(self):  # type: ignore[override]
        return torch.optim.Adam(L.synthesis_parameters(self.generator), lr=self.cfg.lr, betas=tuple(self.cfg.betas))

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if not self.resumed:
            self.load_pretrained()
        max_steps = getattr(self.trainer, "max_steps", -1)
        if max_steps not in (-1, None) and max_steps != self.total_steps():
            raise ValueError(f"trainer.max_steps={max_steps} but the NADA schedule (iter_1st={self.cfg.iter_1st} x "
                             f"ceil({self.cfg.sample_1st}/{self.cfg.batch}) + iter_2nd={self.cfg.iter_2nd} x "
                             f"ceil({self.cfg.n_select}/{self.cfg.batch})) has {self.total_steps()} steps; set "
                             f"trainer.max_steps={self.total_steps()}.")
        self.build_clip()
        self.generator_frozen.eval()

    # ------------------------------------------------------------------------------------------------ training
    def _images(self, out: Dict[str, torch.Tensor], kind: str) -> torch.Tensor:
        """[B, V, H, W, C] render -> [B*V, 3, H, W] CLIP input in [-1, 1]."""
        if kind == "rgb":
            x = out["rgb"]
        elif kind == "silhouette":
            x = (out["mask"] * 2 - 1).expand(*out["mask"].shape[:-1], 3)
        else:
            x = out["normal"]
        return x.reshape(-1, *x.shape[2:]).permute(0, 3, 1, 2)

    def select_layers(self, batch: Dict[str, torch.Tensor]) -> List[int]:
        """NADA's adaptive layer selection (global CLIP loss on w copies of the trainable generator)."""
        cfg = self.cfg
        if cfg.auto_layer_k >= self.n_layers:
            return list(range(self.n_layers))
        gen = self.generator
        for p in gen.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            wt0, wg0 = self.generator_frozen.map(batch["sel_z_tex"], batch["sel_z_geo"])
        wt, wg = wt0.clone().requires_grad_(True), wg0.clone().requires_grad_(True)
        mvp = mvp_from_angles(batch["sel_azimuth"], batch["sel_polar"])
        for _ in range(cfg.auto_layer_iters):
            out = gen.synthesize(wt, wg, mvp, cfg.selection_resolution)
            loss = self.clip.global_(self._images(out, "rgb"), cfg.target_text).mean()
            gt, gg = torch.autograd.grad(loss, [wt, wg], allow_unused=True)
            with torch.no_grad():
                if gt is not None:
                    wt -= cfg.auto_layer_lr * gt
                if gg is not None:
                    wg -= cfg.auto_layer_lr * gg
        return L.select_layers(L.layer_scores(wt0, wt), L.layer_scores(wg0, wg), cfg.auto_layer_k)

    def nada_losses(self, idx: torch.Tensor, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Render the latents ``idx`` with both generators under the same cameras; per-latent losses."""
        cfg = self.cfg
        z = self.pool_z[idx.to(self.pool_z.device)]
        b = z.shape[0]
        with torch.no_grad():
            ws_tex, ws_geo = self.generator_frozen.map(z[:, 0], z[:, 1])
        mvp = mvp_from_angles(batch["azimuth"][:b], batch["polar"][:b])  # [B, V, 4, 4], shared by both
        normals = cfg.geometry_clip == "normal"
        with torch.no_grad():
            out_f = self.generator_frozen.synthesize(ws_tex, ws_geo, mvp, cfg.render_resolution, normals)
        out_t = self.generator.synthesize(ws_tex, ws_geo, mvp, cfg.render_resolution, normals)
        nv = mvp.shape[1]
        ld = self.clip.directional(self._images(out_t, "rgb"), self._images(out_f, "rgb"), cfg.source_text,
                                   cfg.target_text).reshape(b, nv).mean(1)
        per_latent = cfg.lambda_direction * ld
        res = {"loss_direction": ld.mean(), "mvp": mvp, "mvp_frozen": mvp}
        if cfg.geometry_clip != "none":
            lg = self.clip.directional(self._images(out_t, cfg.geometry_clip), self._images(out_f, cfg.geometry_clip),
                                       cfg.source_text, cfg.target_text).reshape(b, nv).mean(1)
            per_latent = per_latent + cfg.lambda_geometry * lg
            res["loss_geometry"] = lg.mean()
        if cfg.lambda_sdf_reg > 0:
            per_latent = per_latent + cfg.lambda_sdf_reg * out_t["meshes"]["sdf_reg_loss"]
        res["per_latent"] = per_latent
        res["loss"] = per_latent.mean()
        return res

    def adapt_step(self, opt: torch.optim.Optimizer, batch: Dict[str, torch.Tensor], step: int,
                   backward=None) -> Dict[str, Any]:
        """One NADA step: latents of ``step``, layer selection, paired renders, loss, backward, clip, step."""
        cfg = self.cfg
        idx = self.batch_latents(step)
        selected = self.select_layers(batch)
        L.apply_selection(self.generator, selected)
        self.last_selected = selected
        opt.zero_grad(set_to_none=True)
        res = self.nada_losses(idx, batch)
        (backward or (lambda t: t.backward()))(res["loss"])
        params = [p for p in L.synthesis_parameters(self.generator) if p.grad is not None]
        if cfg.gradient_clip_threshold > 0 and params:
            res["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.gradient_clip_threshold)
        opt.step()
        opt.zero_grad(set_to_none=True)  # None, not zero: Adam skips unselected layers entirely next step
        # the last epoch of phase 1 records each latent's loss for phase 2's selection
        per1, n1, _, _ = steps_per_phase(cfg.sample_1st, cfg.iter_1st, cfg.n_select, cfg.iter_2nd, cfg.batch)
        if n1 - per1 <= step < n1:
            self.pool_loss[idx.to(self.pool_loss.device)] = res["per_latent"].detach().float()
        res.update(selected=selected, latents=idx, phase=int(step >= n1))
        return res

    def training_step(self, batch: Dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        res = self.adapt_step(self.optimizers(), batch, self.true_global_step, self.manual_backward)
        self.log("train/loss", res["loss"].detach(), prog_bar=True)
        self.log("train/loss_direction", res["loss_direction"].detach())
        if "loss_geometry" in res:
            self.log("train/loss_geometry", res["loss_geometry"].detach())
        self.log("train/phase", float(res["phase"]))
        self.log("train/n_selected", float(len(res["selected"])))
        return res["loss"].detach()

    # ------------------------------------------------------------------------------------------------ evaluation
    def _fixed_z(self, n: int, seed_offset: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.seed + seed_offset)
        return torch.randn(n, 2, self.generator.cfg.z_dim, generator=g).to(self.device)

    @torch.no_grad()
    def render_pair(self, z: torch.Tensor, mvp: torch.Tensor, res: int, psi: float = 1.0):
        ws = self.generator_frozen.map(z[:, 0], z[:, 1], psi)  # the mapping networks are never trained
        # frozen, adapted: [B, V, H, W, 3]
        return [gen.synthesize(*ws, mvp, res)["rgb"] for gen in (self.generator_frozen, self.generator)]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        z = self._fixed_z(min(self.cfg.n_test_latents, 4), 1)
        az, po = turntable_angles(8, device=self.device)
        mvp = mvp_from_angles(az[4:5], po[4:5])[None].expand(z.shape[0], -1, -1, -1)
        f, a = self.render_pair(z, mvp, self.cfg.test_resolution // 2)
        grid = torch.cat([torch.cat(list(f[:, 0]), 1), torch.cat(list(a[:, 0]), 1)], 0)
        self.save_image(f"it{self.true_global_step}-val.png", ((grid + 1) / 2).clamp(0, 1))

    def on_test_start(self) -> None:
        if not self.resumed and self.cfg.checkpoint:
            self.load_pretrained()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        cfg = self.cfg
        step = self.true_global_step
        z = self._fixed_z(cfg.n_test_latents, 1)
        az, po = turntable_angles(cfg.test_frames, device=self.device)
        frames = []
        for t in range(cfg.test_frames):
            mvp = mvp_from_angles(az[t:t + 1], po[t:t + 1])[None].expand(z.shape[0], -1, -1, -1)
            f, a = self.render_pair(z, mvp, cfg.test_resolution, cfg.truncation_psi)
            row = lambda x: torch.cat(list(x[:, 0]), 1)  # noqa: E731 - latents side by side
            frames.append(((torch.cat([row(f), row(a)], 0) + 1) / 2).clamp(0, 1).cpu().numpy())
        self.save_image(f"it{step}-test/frame0.png", frames[0])
        self.save_video(f"it{step}-test.mp4", frames, fps=12)
        self.interpolation_video(step)
        if cfg.evaluate:
            self.evaluate(step)

    @torch.no_grad()
    def interpolation_video(self, step: int) -> Optional[str]:
        cfg = self.cfg
        if cfg.interp_frames < 2:
            return None
        z = self._fixed_z(2, 2)
        ws0 = self.generator_frozen.map(z[:1, 0], z[:1, 1], cfg.truncation_psi)
        ws1 = self.generator_frozen.map(z[1:, 0], z[1:, 1], cfg.truncation_psi)
        az, po = turntable_angles(cfg.interp_frames, device=self.device)
        frames = []
        for t in range(cfg.interp_frames):
            a = t / (cfg.interp_frames - 1)
            wt, wg = (torch.lerp(x0, x1, a) for x0, x1 in zip(ws0, ws1))
            mvp = mvp_from_angles(az[t:t + 1], po[t:t + 1])[None]
            img = self.generator.synthesize(wt, wg, mvp, cfg.test_resolution)["rgb"][0, 0]
            frames.append(((img + 1) / 2).clamp(0, 1).cpu().numpy())
        return self.save_video(f"it{step}-interp.mp4", frames, fps=12)

    @torch.no_grad()
    def evaluate(self, step: int) -> Dict[str, float]:
        """CLIP similarity to target_text of adapted vs frozen renders (same latents, same cameras)."""
        cfg = self.cfg
        self.build_clip()
        n = cfg.eval_samples
        z = self._fixed_z(n, 3)
        g = torch.Generator().manual_seed(cfg.seed + 4)
        az, po = sample_angles((n, 1), cfg.data_camera_mode, g, self.device)
        mvp = mvp_from_angles(az, po)
        f, a = self.render_pair(z, mvp, cfg.test_resolution, cfg.truncation_psi)
        to_img = lambda x: x.reshape(-1, *x.shape[2:]).permute(0, 3, 1, 2)  # noqa: E731
        sim_f = self.clip.similarity(to_img(f), cfg.target_text)
        sim_a = self.clip.similarity(to_img(a), cfg.target_text)
        dir_loss = self.clip.directional(to_img(a), to_img(f), cfg.source_text, cfg.target_text)
        metrics = {"clip_target_similarity_adapted": float(sim_a.mean()),
                   "clip_target_similarity_frozen": float(sim_f.mean()),
                   "clip_target_similarity_gain": float((sim_a - sim_f).mean()),
                   "clip_directional_loss": float(dir_loss.mean()),
                   "target_text": cfg.target_text, "source_text": cfg.source_text, "n_samples": n,
                   "global_step": step, "clip_models": list(cfg.clip_models)}
        self.save_json("metrics.json", metrics)
        info(f"CLIP similarity to '{cfg.target_text}': adapted {metrics['clip_target_similarity_adapted']:.4f}, "
             f"frozen {metrics['clip_target_similarity_frozen']:.4f}")
        return metrics

    # ------------------------------------------------------------------------------------------------ export
    def on_predict_start(self) -> None:
        if not self.resumed and self.cfg.checkpoint:
            self.load_pretrained()

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0:
            self.export()

    def export(self) -> List[str]:
        from .export import export_meshes

        step = self.true_global_step
        z = self._fixed_z(self.cfg.n_export, 5)
        written = export_meshes(self, self.generator, self.generator_frozen, z, self.cfg.truncation_psi,
                                f"it{step}-export", dict(self.cfg.export))
        from .checkpoint import save_generator

        written.append(save_generator(self.get_save_path(f"it{step}-export/generator_adapted.pt"), self.generator))
        info(f"Exported {len(written)} files under {self.get_save_path(f'it{step}-export')}")
        return written
