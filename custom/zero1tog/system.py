"""``zero1tog-system``: train Zero-1-to-G's multi-view, multi-attribute UNet on splatter attribute images
(``../shared/reference/zero1tog.md`` section 3, "Training": the authors' Wonder3D fork, two stages).

One training step (batch from ``zero1tog-splatter-data``: ``cond_rgb``, ``attributes`` [B, 5, V, 3, H, W] in [-1, 1]):

1. the attribute images are VAE-encoded view by view (frozen VAE, ``latent_dist.sample() * scaling_factor``); the
   condition image gives the condition latent (posterior mode) and the CLIP image token (:class:`ConditionEncoder`);
2. **stage "mix"** (stage 1): every object keeps one attribute drawn at random (the class labels' one-hot says
   which), the UNet runs with ``num_attributes=1`` and joint (cross-attribute) attention off; one t per object;
   **stage "joint"** (stage 2): all 5 attributes, joint attention on, one t per object plus a per-attribute offset
   drawn from U[-``timestep_offset``, ``timestep_offset``) (the fork's ``sync_domain_timesteps``), clamped to
   [0, T-1];
3. condition dropout (classifier-free guidance): with probability ``condition_drop`` per object, its condition
   latent and CLIP token are both zero ("drop as a whole": every view and attribute of the object);
4. loss = MSE between the UNet output and the scheduler's target (``epsilon``, SD-image-variations' own, or
   ``v_prediction``), each sample weighted by Min-SNR-gamma: ``min(snr, gamma) / snr`` for epsilon and
   ``min(snr, gamma) / (snr + 1)`` for v (``snr_gamma: 0`` turns it off), then averaged;
5. optional rendering loss (stage "joint" only, ``system.loss.lambda_render > 0``): the predicted x0 latents are
   VAE-decoded (gradient through the frozen decoder), clipped to [-1, 1], mapped back to a splatter and rendered
   through :func:`.splatter.render_splatter` into the splatter views (and the supervision views when the data has
   them): MSE(rgb) + MSE(alpha) against the ground truth, optionally times the object's mean alpha-bar_t.

Trainable parameters (``trainable``): ``all`` (default: the whole UNet; in stage "mix" the joint-attention modules
get no gradient and are frozen, so DDP sees no unused parameters), ``attention`` (the earlier branch's
``--only_train_attention``: names containing ``transformer_blocks``, plus ``time_emb_proj``, ``class_embedding``,
``conv_norm_out``, ``conv_out``), ``joint`` (only ``norm_joint_mid``/``attn_joint_mid`` and the class embedding).

Optimisation: AdamW over the trainable parameters, the class embedding's learning rate ``class_embedding_lr_scale``
(10) times the rest's; a per-step LambdaLR: linear warm-up from 0 over ``warmup_steps``, then constant (diffusers'
``constant_with_warmup``). Gradient clipping and precision come from the trainer.

EMA (``ema.enabled``): ``unet_ema`` (a frozen copy of the UNet, in the checkpoint) follows every optimizer step:
``shadow = d * shadow + (1 - d) * param`` with ``d = min(ema.decay, (1 + n) / (10 + n))``, n the number of earlier
updates (diffusers' ``EMAModel`` schedule); buffers are copied. Validation evaluates the EMA UNet.

Stage 2 starts from stage 1 with ``system.init_from=<trial folder | checkpoint | LAST:<exp dir>>``: the earlier
run's UNet (its EMA weights when ``init_from_ema``) fills both ``unet`` and ``unet_ema``; a resumed run ignores it.

Inference (``configs/image-to-gaussians.yaml``): with ``system.image`` set, the test pass runs
:class:`.inference.Zero1toGPipeline` on this system's modules (the EMA UNet when there is one and ``use_ema``; DDIM
``steps``, ``guidance_scale``, ``eta``, ``seed``, ``elevation``) and writes :func:`.inference.write_outputs`' files
into the trial's ``save/`` folder; the image is checked and preprocessed in ``configure`` (a missing file or package
is a config error before the trial folder exists). ``--test --resume <trial>`` samples with the trial's EMA weights.

Weights: ``pretrained_model_name_or_path`` (hub id or folder, SD-image-variations layout: ``unet/``, ``vae/``,
``image_encoder/``, ``scheduler/``); ``unet_name_or_path`` may point the UNet elsewhere (a base SD UNet is grown
into the Zero-1-to-G one by :func:`.model.loading.load_unet`).
"""

from __future__ import annotations

import copy
import os
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

import threestudio
from threestudio.systems.base import BaseSystem
from threestudio.utils.log import info

from .data import SplatterDataModule
from .model.unet import NUM_ATTRIBUTES, camera_attribute_labels, fold, unfold
from .schema import Zero1toGSystemConfig

WONDER3D_AZIMUTHS = (0.0, 90.0, 180.0, 270.0, 30.0, 330.0)
STAGES = ("mix", "joint")
TRAINABLE = ("all", "attention", "joint")
ATTENTION_KEYS = ("transformer_blocks", "time_emb_proj", "class_embedding", "conv_norm_out", "conv_out")


# ------------------------------------------------------------------------------------------- pure pieces (tested)
def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float,
                    prediction_type: str) -> torch.Tensor:
    """Per-sample Min-SNR-gamma loss weights for ``timesteps``: snr = abar / (1 - abar); ``min(snr, gamma) / snr``
    (epsilon) or ``min(snr, gamma) / (snr + 1)`` (v_prediction); all ones when ``gamma <= 0``."""
    abar = alphas_cumprod.to(timesteps.device)[timesteps].double()
    snr = abar / (1.0 - abar)
    if gamma <= 0:
        return torch.ones_like(snr).float()
    clipped = snr.clamp(max=float(gamma))
    if prediction_type == "epsilon":
        return (clipped / snr).float()
    if prediction_type == "v_prediction":
        return (clipped / (snr + 1.0)).float()
    raise ValueError(f"Min-SNR weighting: unknown prediction_type {prediction_type!r} (epsilon or v_prediction)")


def ema_decay(decay: float, num_updates: int) -> float:
    """The EMA decay of update number ``num_updates`` (0-based): ``min(decay, (1 + n) / (10 + n))``."""
    n = int(num_updates)
    return min(float(decay), (1.0 + n) / (10.0 + n))


@torch.no_grad()
def ema_update(shadow: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``shadow = decay * shadow + (1 - decay) * model`` for floating parameters that train; the rest copied. One
    multi-tensor update for all of them (not two kernels per parameter: the demo UNet has hundreds)."""
    params = dict(model.named_parameters())
    avg_s, avg_p, copy_s, copy_p = [], [], [], []
    for name, s in shadow.named_parameters():
        p = params[name].detach()
        if params[name].requires_grad and s.dtype.is_floating_point:
            avg_s.append(s)
            avg_p.append(p if p.dtype == s.dtype else p.to(s.dtype))
        else:
            copy_s.append(s)
            copy_p.append(p)
    bufs = dict(model.named_buffers())
    for name, b in shadow.named_buffers():
        copy_s.append(b)
        copy_p.append(bufs[name])
    if avg_s:
        torch._foreach_mul_(avg_s, decay)
        torch._foreach_add_(avg_s, avg_p, alpha=1.0 - decay)
    if copy_s:
        torch._foreach_copy_(copy_s, copy_p)


def stage_timesteps(num_objects: int, num_attributes: int, num_train_timesteps: int, offset: int,
                    device: Any = None) -> torch.Tensor:
    """[B, D] timesteps: one t ~ U{0..T-1} per object, plus (``offset > 0``) a per-attribute offset
    ~ U{-offset..offset-1}, clamped to [0, T-1]. Draws from the global torch RNG (the training stream)."""
    t = torch.randint(0, num_train_timesteps, (num_objects, 1), device=device)
    if offset > 0:
        t = t + torch.randint(-offset, offset, (num_objects, num_attributes), device=device)
    return t.expand(num_objects, num_attributes).clamp(0, num_train_timesteps - 1).long()


def condition_keep_mask(num_objects: int, drop: float, device: Any = None) -> torch.Tensor:
    """[B] 1.0 for objects that keep their condition, 0.0 for the dropped ones (probability ``drop`` each)."""
    if drop <= 0:
        return torch.ones(num_objects, device=device)
    return (torch.rand(num_objects, device=device) >= drop).float()


def is_trainable(name: str, mode: str, stage: str) -> bool:
    """Whether UNet parameter ``name`` trains under ``trainable=mode`` in ``stage``."""
    joint = "_joint_mid." in name
    if stage == "mix" and joint:
        return False  # no joint attention in stage 1: no gradient reaches these
    if mode == "all":
        return True
    if mode == "attention":
        return any(k in name for k in ATTENTION_KEYS)
    if mode == "joint":
        return joint or name.startswith("class_embedding.")
    raise ValueError(f"system.trainable must be one of {TRAINABLE}, got {mode!r}")


class WarmupConstant:
    """LambdaLR factor: ``step / warmup_steps`` below ``warmup_steps``, then 1 (picklable)."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return float(step) / float(max(1, self.warmup_steps))
        return 1.0


# ------------------------------------------------------------------------------------------------------- system
@threestudio.register("zero1tog-system")
class Zero1toGSystem(BaseSystem):
    Config = Zero1toGSystemConfig
    cfg: Config

    # ------------------------------------------------------------------ models
    def configure(self) -> None:
        from diffusers import DDPMScheduler

        from .model.conditioning import ConditionEncoder
        from .model.loading import load_unet

        c = self.cfg
        if c.stage not in STAGES:
            raise ValueError(f"system.stage must be one of {STAGES}, got {c.stage!r}")
        if c.trainable not in TRAINABLE:
            raise ValueError(f"system.trainable must be one of {TRAINABLE}, got {c.trainable!r}")
        root = c.pretrained_model_name_or_path
        self.unet = load_unet(c.unet_name_or_path or root, key="system.unet_name_or_path", **dict(c.unet_changes))
        self.condition = ConditionEncoder.from_pretrained(root, cond_size=c.cond_size,
                                                          key="system.pretrained_model_name_or_path")
        self.noise_scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
        self.prediction_type = c.prediction_type or self.noise_scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"system.prediction_type must be epsilon or v_prediction, got {self.prediction_type!r}")
        self.register_buffer("alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone().float(), persistent=False)
        if c.init_from and not self.resumed:
            self._init_from(c.init_from)
        for n, p in self.unet.named_parameters():
            p.requires_grad_(is_trainable(n, c.trainable, c.stage))
        if c.ema.enabled:
            self.unet_ema = copy.deepcopy(self.unet).requires_grad_(False).eval()
            if c.init_from and not self.resumed and self._init_ema is not None:
                self.unet_ema.load_state_dict(self._init_ema)
        self._init_ema = None
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self._ema_count: Optional[int] = None  # host copy of ema_updates, read at the first update
        self._condition_image: Optional[torch.Tensor] = None
        if c.image is not None:  # checked (and preprocessed) now, before a trial folder is made
            self._condition_image = self.load_condition_image()

    def _init_from(self, source: str) -> None:
        from threestudio.utils.misc import load_module_weights
        from threestudio.utils.trials import resolve_checkpoint

        ckpt = resolve_checkpoint(source, key="system.init_from")
        sd, _, step = load_module_weights(ckpt, map_location="cpu")
        raw = {k[len("unet."):]: v for k, v in sd.items() if k.startswith("unet.")}
        ema = {k[len("unet_ema."):]: v for k, v in sd.items() if k.startswith("unet_ema.")}
        if not raw:
            raise ValueError(f"system.init_from: {ckpt} holds no 'unet.' weights (not a zero1tog-system checkpoint)")
        use = ema if (self.cfg.init_from_ema and ema) else raw
        self.unet.load_state_dict(use)
        self._init_ema = use
        info(f"zero1tog: UNet initialised from {ckpt} (step {step}, {'EMA' if use is ema else 'raw'} weights)")

    def unet_state(self, ema: bool = True) -> torch.nn.Module:
        return self.unet_ema if (ema and self.cfg.ema.enabled) else self.unet

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):  # type: ignore[override]
        c = self.cfg
        main, cls = [], []
        for n, p in self.unet.named_parameters():
            if p.requires_grad:
                (cls if n.startswith("class_embedding.") else main).append(p)
        groups = [{"params": main, "lr": c.lr, "name": "unet"}]
        if cls:
            groups.append({"params": cls, "lr": c.lr * c.class_embedding_lr_scale, "name": "class_embedding"})
        opt = torch.optim.AdamW(groups, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay, eps=c.adam_eps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupConstant(c.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ batch pieces
    def camera_angles(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(condition elevation [B], view elevations [B, V], azimuth offsets [B, V]) in radians, from the data
        module's stored cameras (object ``index``); without them, elevation 0 and the wonder3d azimuths."""
        b, v = batch["attributes"].shape[0], batch["attributes"].shape[2]
        dm = self._trainer.datamodule if self._trainer is not None else None
        ce, el, az = [], [], []
        for i in batch["index"].view(-1).tolist():
            views = dm.load(int(i))["cameras"]["views"] if isinstance(dm, SplatterDataModule) else None
            if views is None:
                ce.append(0.0)
                el.append([0.0] * v)
                az.append(list(WONDER3D_AZIMUTHS[:v]))
                continue
            a0 = float(views["input"]["azimuth_deg"][0])
            ce.append(float(views["input"]["elevation_deg"][0]))
            el.append([float(x) for x in views["splatter"]["elevation_deg"]])
            az.append([(float(x) - a0) % 360.0 for x in views["splatter"]["azimuth_deg"]])
        dev = batch["attributes"].device
        out = (torch.tensor(ce).view(b), torch.tensor(el).view(b, v), torch.tensor(az).view(b, v))
        return tuple(x.deg2rad().to(dev) for x in out)  # type: ignore[return-value]

    def encode_attributes(self, attributes: torch.Tensor) -> torch.Tensor:
        """[B, D, V, 3, H, W] in [-1, 1] -> latents [B, D, V, 4, H/8, W/8] (posterior sample x scaling factor)."""
        vae = self.condition.vae
        shape = attributes.shape
        with torch.no_grad():
            x = attributes.reshape(-1, *shape[3:]).to(vae.dtype)
            lat = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor
        return lat.float().reshape(*shape[:3], *lat.shape[1:])

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[N, 4, h, w] -> images [N, 3, 8h, 8w] (gradient flows to the latents)."""
        vae = self.condition.vae
        return vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample.float()

    def select_attributes(self, batch_size: int, stage: str, device: Any) -> torch.Tensor:
        """[B, D] attribute indices: stage "mix" one random attribute per object; "joint" all, in order."""
        if stage == "mix":
            return torch.randint(0, NUM_ATTRIBUTES, (batch_size, 1), device=device)
        return torch.arange(NUM_ATTRIBUTES, device=device).expand(batch_size, NUM_ATTRIBUTES)

    def diffusion_inputs(self, batch: Dict[str, Any], stage: str, attributes: Optional[torch.Tensor] = None,
                         timesteps: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None,
                         noise: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """Everything one diffusion step needs, folded to (D B V). Random choices come from the global RNG unless
        given: ``attributes`` [B, D], ``timesteps`` [B, D], ``keep`` [B], ``noise`` [B, D, V, 4, h, w]."""
        imgs = batch["attributes"]
        b, _, v = imgs.shape[:3]
        dev = imgs.device
        if attributes is None:
            attributes = self.select_attributes(b, stage, dev)
        d = attributes.shape[1]
        chosen = torch.gather(imgs, 1, attributes.view(b, d, 1, 1, 1, 1).expand(b, d, *imgs.shape[2:]))
        x0 = self.encode_attributes(chosen)  # [B, D, V, 4, h, w]
        if timesteps is None:
            offset = self.cfg.timestep_offset if stage == "joint" else 0
            timesteps = stage_timesteps(b, d, self.noise_scheduler.config.num_train_timesteps, offset, dev)
        if noise is None:
            noise = torch.randn_like(x0)
        if keep is None:
            keep = condition_keep_mask(b, self.cfg.condition_drop, dev)
        t_full = timesteps.view(b, d, 1).expand(b, d, v)
        x0_f, noise_f, t_f = fold(x0), fold(noise), fold(t_full)
        xt = self.noise_scheduler.add_noise(x0_f, noise_f, t_f)
        cond_lat, clip_tok = self.condition.encode(batch["cond_rgb"])
        cond_lat = cond_lat.float() * keep.view(b, 1, 1, 1)
        clip_tok = clip_tok.float() * keep.view(b, 1, 1)
        per_obj = lambda x: fold(x[:, None, None].expand(b, d, v, *x.shape[1:]))  # noqa: E731
        ce, el, az = self.camera_angles(batch)
        labels = fold(camera_attribute_labels(ce.view(b, 1, 1), el[:, None], az[:, None],
                                              attributes.view(b, d, 1).expand(b, d, v)))
        if self.prediction_type == "epsilon":
            target = noise_f
        else:
            target = self.noise_scheduler.get_velocity(x0_f, noise_f, t_f)
        return {"sample": torch.cat([xt, per_obj(cond_lat)], 1), "xt": xt, "timesteps": t_f,
                "clip": per_obj(clip_tok), "labels": labels, "target": target, "x0": x0_f, "attributes": attributes,
                "num_objects": b, "num_attributes": d, "keep": keep, "timesteps_bd": timesteps}

    def run_unet(self, unet: torch.nn.Module, inp: Dict[str, Any], stage: str) -> torch.Tensor:
        dtype = next(unet.parameters()).dtype
        return unet(inp["sample"].to(dtype), inp["timesteps"], inp["clip"].to(dtype),
                    class_labels=inp["labels"].to(dtype), num_attributes=inp["num_attributes"],
                    joint_attention=(stage == "joint")).sample.float()

    def diffusion_loss(self, pred: torch.Tensor, inp: Dict[str, Any]) -> torch.Tensor:
        per = F.mse_loss(pred, inp["target"].float(), reduction="none").flatten(1).mean(1)
        w = min_snr_weights(self.alphas_cumprod, inp["timesteps"], self.cfg.snr_gamma, self.prediction_type)
        return (per * w).mean()

    def predicted_x0(self, pred: torch.Tensor, inp: Dict[str, Any]) -> torch.Tensor:
        abar = self.alphas_cumprod[inp["timesteps"]].view(-1, 1, 1, 1)
        xt = inp["xt"].float()
        if self.prediction_type == "epsilon":
            return (xt - (1 - abar).sqrt() * pred) / abar.sqrt()
        return abar.sqrt() * xt - (1 - abar).sqrt() * pred

    def render_loss(self, pred: torch.Tensor, inp: Dict[str, Any], batch: Dict[str, Any]) -> torch.Tensor:
        from .splatter import attribute_images_to_splatter, render_splatter

        b, d = inp["num_objects"], inp["num_attributes"]
        if d != NUM_ATTRIBUTES:
            raise ValueError("the rendering loss needs all 5 attributes (system.stage: joint)")
        imgs = self.decode_latents(self.predicted_x0(pred, inp)).clamp(-1, 1)
        imgs = unfold(imgs, num_objects=b)  # [B, 5, V, 3, H, W]
        splatter = attribute_images_to_splatter(imgs, self.cfg.mapping)
        abar = self.alphas_cumprod[inp["timesteps_bd"]].view(b, -1).mean(1)
        total = pred.new_zeros(())
        for i in range(b):
            c2w, rgb, alpha = batch["views_c2w"][i], batch["views_rgb"][i], batch["views_alpha"][i]
            if "sup_c2w" in batch:
                c2w = torch.cat([c2w, batch["sup_c2w"][i]])
                rgb = torch.cat([rgb, batch["sup_rgb"][i]])
                alpha = torch.cat([alpha, batch["sup_alpha"][i]])
            h, w = rgb.shape[-2:]
            out = render_splatter(splatter[i], c2w, batch["fovy"][i], h, w, self.cfg.render_background,
                                  backend=self.cfg.render_backend, tile_size=self.cfg.render_tile_size)
            li = F.mse_loss(out["rgb"].permute(0, 3, 1, 2), rgb) + F.mse_loss(out["alpha"].permute(0, 3, 1, 2), alpha)
            total = total + (abar[i] if self.cfg.render_use_weight_t else 1.0) * li
        return total / b

    # ------------------------------------------------------------------ training
    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._ema_count = None  # the loaded ema_updates counts from here

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        stage = self.cfg.stage
        inp = self.diffusion_inputs(batch, stage)
        pred = self.run_unet(self.unet, inp, stage)
        l_diff = self.diffusion_loss(pred, inp)
        loss = self.loss_weight("diffusion", 1.0) * l_diff
        lam_r = self.loss_weight("render", 0.0)
        l_render = None
        if lam_r > 0:
            l_render = self.render_loss(pred, inp, batch)
            loss = loss + lam_r * l_render
        if self.logging_step():
            self.log_train("train/loss_diffusion", l_diff)
            if l_render is not None:
                self.log_train("train/loss_render", l_render)
            self.log_progress("train/loss", loss)
        return loss

    def on_train_start(self) -> None:
        self.unet.train()  # from_pretrained leaves it in eval mode; the frozen encoders and the EMA copy stay so

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # the EMA follows every optimizer step, before the batch-end hooks (ModelCheckpoint saves there)
        super().optimizer_step(*args, **kwargs)
        if self.cfg.ema.enabled:
            if self._ema_count is None:  # read the (checkpointed) counter once, not with a sync every step
                self._ema_count = int(self.ema_updates)
            ema_update(self.unet_ema, self.unet, ema_decay(self.cfg.ema.decay, self._ema_count))
            self._ema_count += 1
            self.ema_updates += 1

    # ------------------------------------------------------------------ evaluation (EMA weights)
    @torch.no_grad()
    def eval_losses(self, batch: Dict[str, Any], ema: bool = True) -> Dict[str, float]:
        """Diffusion loss of held-out objects at ``val_timesteps``, all 5 attributes (stage "mix": each as its own
        one-attribute sample), fixed noise from ``val_seed``, no condition dropout."""
        stage = self.cfg.stage
        imgs = batch["attributes"]
        b = imgs.shape[0]
        g = torch.Generator().manual_seed(self.cfg.val_seed)
        out = {}
        unet = self.unet_state(ema)
        for t in self.cfg.val_timesteps:
            if stage == "joint":
                att = torch.arange(NUM_ATTRIBUTES, device=imgs.device).expand(b, NUM_ATTRIBUTES)
                sub = [(batch, att)]
            else:
                sub = [(batch, torch.full((b, 1), k, device=imgs.device)) for k in range(NUM_ATTRIBUTES)]
            losses = []
            for bt, att in sub:
                d = att.shape[1]
                h, w = imgs.shape[-2] // 8, imgs.shape[-1] // 8
                noise = torch.randn(b, d, imgs.shape[2], 4, h, w, generator=g).to(imgs.device)
                tt = torch.full((b, d), int(t), device=imgs.device, dtype=torch.long)
                inp = self.diffusion_inputs(bt, stage, att, tt, torch.ones(b, device=imgs.device), noise)
                if inp["x0"].shape[-2:] != noise.shape[-2:]:
                    raise ValueError("the VAE does not downsample by 8")
                losses.append(float(F.mse_loss(self.run_unet(unet, inp, stage), inp["target"])))
            out[f"t{int(t)}"] = sum(losses) / len(losses)
        return out

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> Dict[str, float]:
        losses = self.eval_losses(batch, ema=True)
        mean = sum(losses.values()) / max(1, len(losses))
        self.log("val/loss_ema", mean, batch_size=1, sync_dist=True)
        return losses

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> Dict[str, Any]:
        if self.cfg.image is not None:
            return self.image_to_gaussians() if batch_idx == 0 else {}
        losses = self.eval_losses(batch, ema=True)
        mean = sum(losses.values()) / max(1, len(losses))
        self.log("test/loss_ema", mean, batch_size=1, sync_dist=True)
        return losses

    # ------------------------------------------------------------------ inference (test pass with system.image)
    def load_condition_image(self) -> torch.Tensor:
        """The condition image [3, S, S] in [0, 1] of ``system.image`` (read only); a missing file, an unreadable
        image or a missing background-removal package is a :class:`ConfigError` naming ``system.image``."""
        from threestudio.utils.config import ConfigError, ConfigIssue

        from .inference import MissingPackageError, prepare_input

        c = self.cfg
        path = os.path.abspath(os.path.expanduser(str(c.image)))
        modes = {"auto": None, "always": True, "never": False}
        if c.remove_background not in modes:
            raise ConfigError([ConfigIssue("system.remove_background", f"must be one of {sorted(modes)}, got "
                                           f"{c.remove_background!r}")])
        if not os.path.isfile(path):
            raise ConfigError([ConfigIssue("system.image", f"no image file {path}", "",
                                           "pass an existing image, e.g. system.image=photo.png (RGBA with a "
                                           "transparent background)")])
        try:
            return prepare_input(path, c.input_size, background=tuple(c.render_background),
                                 remove_bg=modes[c.remove_background])
        except MissingPackageError as e:
            raise ConfigError([ConfigIssue("system.image", str(e))]) from None
        except (OSError, ValueError) as e:
            raise ConfigError([ConfigIssue("system.image", f"cannot use {path}: {e}")]) from None

    def inference_config(self) -> Any:
        from .inference import InferenceConfig

        c = self.cfg
        return InferenceConfig(num_inference_steps=c.steps, guidance_scale=c.guidance_scale, eta=c.eta,
                               view_set=c.view_set, mapping=c.mapping, input_elevation_deg=c.elevation,
                               vae_batch=c.vae_batch)

    def sampling_scheduler(self) -> Any:
        """The DDIM scheduler of sampling: the model folder's scheduler config (the base's without) with the
        prediction type this system trains on (``system.prediction_type`` overrides the folder's)."""
        from .inference import BASE_SCHEDULER_CONFIG, _read_scheduler_config, make_scheduler

        cfg = dict(_read_scheduler_config(self.cfg.pretrained_model_name_or_path) or BASE_SCHEDULER_CONFIG)
        cfg["prediction_type"] = self.prediction_type
        return make_scheduler(cfg)

    def pipeline(self) -> Any:
        """:class:`.inference.Zero1toGPipeline` on this system's modules: the EMA UNet (``use_ema``, when there is
        one), the condition encoder and :meth:`sampling_scheduler`."""
        from .inference import Zero1toGPipeline

        return Zero1toGPipeline(self.unet_state(self.cfg.use_ema), self.condition, self.sampling_scheduler(),
                                self.inference_config())

    @torch.no_grad()
    def image_to_gaussians(self) -> Dict[str, Any]:
        """Sample the gaussians of ``system.image`` and write :func:`.inference.write_outputs`' files into the
        trial's ``save/`` folder (global rank 0)."""
        from .inference import OutputConfig, write_outputs

        c = self.cfg
        if self._condition_image is None:
            self._condition_image = self.load_condition_image()
        pipe = self.pipeline()
        rgb = self._condition_image[None].to(self.device)
        result = pipe(rgb, torch.Generator().manual_seed(int(c.seed)))
        ema = c.use_ema and c.ema.enabled
        extra = {"device": str(self.device), "model": c.pretrained_model_name_or_path,
                 "unet": c.unet_name_or_path or c.pretrained_model_name_or_path, "unet_weights": "ema" if ema else "raw",
                 "image": str(c.image), "seed": int(c.seed), "global_step": int(self.true_global_step)}
        out: Dict[str, Any] = {"seconds_per_object": float(result["seconds"])}
        if self._is_writer:
            ocfg = OutputConfig(turntable_frames=c.turntable_frames, turntable_resolution=c.turntable_resolution,
                                fps=c.fps, prune_opacity=c.prune_opacity,
                                background=tuple(c.render_background), extra=extra)
            paths = write_outputs(self.get_save_dir(), result, rgb.cpu(), pipe.cfg, ocfg)
            info(f"zero1tog: {os.path.basename(str(c.image))} -> {self.get_save_dir()} "
                 f"({result['seconds']:.2f} s per object on {self.device}, {c.steps} DDIM steps, guidance "
                 f"{c.guidance_scale}): " + ", ".join(sorted(os.path.basename(p) for p in paths.values())))
            out["paths"] = paths
        return out
