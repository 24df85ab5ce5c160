"""Shared machinery of the MVDream guidances (``mvdream-sds-guidance``, ``mvdream-asd-guidance``); not registered.

Inputs follow threestudio's guidance contract plus the cameras: ``guidance(rgb [B, H, W, 3] in [0, 1], prompt_utils,
elevation, azimuth, camera_distances, c2w=None, rgb_as_latents=False)``, with B a whole number of objects of
``n_view`` views each, laid out object-major (what ``multiview-camera`` yields). The camera condition is ``c2w``
when the system passes it, else it is rebuilt from (elevation, azimuth, distance) exactly as ``multiview-camera``
builds its cameras (they are the same matrices when the data module's perturbations are 0, its default).

Per step, as the authors do: **one timestep t for the whole batch** (every object and view), renders resized to
``image_size`` (256) and VAE-encoded to [B, 4, 32, 32] latents (gradients flow through the encoder), independent
noise per view, and one batched no-grad UNet call whose rows are whole objects: [cond, uncond] for SDS,
[x_t·cond, x_t·uncond, x_{t+Δt}·cond] for ASD, each with its camera and ``num_frames = n_view``. Text embeddings
are the plain (not view-dependent) prompt and negative prompt.

Loading (:mod:`threestudio.models.diffusion.mvdream.loading`): ``pretrained_model_name_or_path`` is an
``sd-v2.1-base-4view.pt`` file, a folder or hub repository holding one (``checkpoint_file``), or a
diffusers-format folder (``checkpoint_file: null``). UNet and VAE are frozen, fp16 on CUDA, the VAE decoder
dropped. ``compile`` (default on CUDA; ``compile_options``) wraps the UNet call and the VAE
encode in ``torch.compile(mode="reduce-overhead", fullgraph=True, dynamic=False)`` with inductor's on-disk cache,
as the Stable Diffusion guidances do.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from threestudio.models.diffusion.mvdream import loading
from threestudio.models.guidance.base import BaseGuidance, DiffusionGuidanceMixin
from threestudio.models.guidance.mvdream.score import CAMERA_CONDITIONS, camera_condition
from threestudio.models.guidance.schema import MVDreamGuidanceBaseConfig
from threestudio.ops import cameras as cam_ops
from threestudio.ops import score_distillation as sd_ops
from threestudio.utils.log import info
from threestudio.utils.misc import cleanup, get_device

KEY = "system.guidance.pretrained_model_name_or_path"


class MVDreamGuidanceBase(DiffusionGuidanceMixin, BaseGuidance):
    Config = MVDreamGuidanceBaseConfig

    cfg: Config

    # ------------------------------------------------------------------ building
    @classmethod
    def preflight(cls, cfg: Any) -> None:
        """Start-up check, no weights read: the checkpoint is there and every tensor name and shape is right."""
        from threestudio.utils.config import parse_structured

        c = parse_structured(cls.Config, cfg)
        loading.preflight(c.pretrained_model_name_or_path, c.checkpoint_file, KEY, ("unet", "vae"),
                          num_head_channels=c.num_head_channels)

    def configure(self, device: Optional[Any] = None, models: Optional[loading.MVDreamModels] = None) -> None:
        """Load the UNet, VAE and schedule (or take ``models``, prebuilt: benchmarks and notebooks)."""
        c = self.cfg
        if c.weighting_strategy not in sd_ops.WEIGHTINGS:
            raise ValueError(f"system.guidance.weighting_strategy: unknown {c.weighting_strategy!r}; choose one of "
                             f"{', '.join(sd_ops.WEIGHTINGS)}")
        if c.camera_condition_type not in CAMERA_CONDITIONS:
            raise ValueError(f"system.guidance.camera_condition_type: unknown {c.camera_condition_type!r}; choose "
                             f"one of {', '.join(CAMERA_CONDITIONS)}")
        if c.n_view < 1 or c.image_size % 8:
            raise ValueError(f"system.guidance: n_view ({c.n_view}) must be >= 1 and image_size ({c.image_size}) a "
                             f"multiple of 8")
        self.device = torch.device(device) if device is not None else get_device()
        self.n_view = int(c.n_view)  # plain attributes only inside the compiled functions (no config reads)
        on_cuda = self.device.type == "cuda"
        half = c.half_precision_weights if c.half_precision_weights is not None else on_cuda
        self.weights_dtype = torch.float16 if half else torch.float32
        if models is None:
            info(f"Loading MVDream UNet and VAE from {c.pretrained_model_name_or_path}"
                 f"{' (' + c.checkpoint_file + ')' if c.checkpoint_file else ''}, "
                 f"{str(self.weights_dtype).replace('torch.', '')}")
            models = loading.load_mvdream(c.pretrained_model_name_or_path, ("unet", "vae", "alphas"),
                                          checkpoint_file=c.checkpoint_file, key=KEY, dtype=self.weights_dtype,
                                          device=self.device, num_frames=c.n_view,
                                          num_head_channels=c.num_head_channels)
        else:
            for m in (models.unet, models.vae):
                loading.cast(m.requires_grad_(False).eval(), dtype=self.weights_dtype, device=self.device)
            models.unet.num_frames = c.n_view
        self.unet = models.unet
        self.vae = models.vae
        self.vae.decoder = None  # only the encoder is used (saves memory)
        self.vae.post_quant_conv = None
        self.alphas: torch.Tensor = models.alphas_cumprod.to(self.device, torch.float32)
        self.num_train_timesteps = int(self.alphas.shape[0])
        self.scaling_factor = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        self.cross_attention_dim = self.unet.cross_attention_dim
        self.setup_schedule_and_compile(on_cuda, "MVDream")
        cleanup()

    def to(self, device: Any) -> "MVDreamGuidanceBase":
        self.device = torch.device(device)
        loading.cast(self.unet, device=self.device)
        loading.cast(self.vae, device=self.device)
        self.alphas = self.alphas.to(self.device)
        return self

    # ------------------------------------------------------------------ networks (the compiled parts)
    def _unet_eager(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                    camera: torch.Tensor) -> torch.Tensor:
        return self.unet(latents, t, context, camera, num_frames=self.n_view)

    def _encode_eager(self, imgs: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(imgs.to(self.weights_dtype) * 2.0 - 1.0).latent_dist
        return posterior.sample() * self.scaling_factor

    def forward_unet(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                     camera: torch.Tensor) -> torch.Tensor:
        """ε̂ for a batch of whole objects (no grad), float32."""
        with torch.no_grad():
            return self._unet_fn(latents, t, context, camera).float()

    def encode_images(self, imgs: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [0, 1] -> latents [B, 4, S/8, S/8] (float32), differentiable w.r.t. ``imgs``."""
        return self._encode_fn(imgs).float()

    def get_latents(self, rgb: torch.Tensor, rgb_as_latents: bool = False) -> torch.Tensor:
        x = rgb.permute(0, 3, 1, 2)
        s = self.cfg.image_size // 8 if rgb_as_latents else self.cfg.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, (s, s), mode="bilinear", align_corners=False)
        return x if rgb_as_latents else self.encode_images(x)

    # ------------------------------------------------------------------ per-step pieces
    def check_batch(self, b: int) -> None:
        if b % self.cfg.n_view:
            raise ValueError(
                f"MVDream guidance: the batch has {b} views, not a whole number of objects of n_view="
                f"{self.cfg.n_view} views; use data_type: multiview-camera with data.batch_size a multiple of "
                f"{self.cfg.n_view} (and data.n_view = system.guidance.n_view)")

    def sample_timestep(self, t: Optional[Any] = None) -> torch.Tensor:
        """One timestep for the whole batch, [1] long on the device: U{min_step, ..., max_step} or the given one."""
        if t is None:
            return torch.randint(self.min_step, self.max_step + 1, (1,), dtype=torch.long, device=self.device)
        t = torch.as_tensor(t, device=self.device).to(torch.long).reshape(-1)
        if t.numel() != 1 and not bool((t == t[0]).all()):
            raise ValueError("MVDream guidance uses one timestep for the whole batch; got several")
        return t[:1]

    def camera_rows(self, b: int, elevation: torch.Tensor, azimuth: torch.Tensor,
                    camera_distances: torch.Tensor, c2w: Optional[torch.Tensor]) -> torch.Tensor:
        """[B, 16] camera conditions (float32, on the device)."""
        if c2w is None:
            c2w = cam_ops.c2w_from_spherical(elevation.float(), azimuth.float(), camera_distances.float())
        if c2w.shape[0] != b:
            raise ValueError(f"MVDream guidance: {c2w.shape[0]} cameras for {b} images")
        return camera_condition(c2w.to(self.device), self.cfg.camera_condition_type)

    def text_embeddings(self, prompt_utils: Any, elevation: torch.Tensor, azimuth: torch.Tensor,
                        camera_distances: torch.Tensor) -> torch.Tensor:
        """[2B, L, D]: B conditional rows, then B unconditional ones."""
        if prompt_utils.embedding_dim != self.cross_attention_dim:
            from threestudio.utils.weights import PretrainedWeightsError

            raise PretrainedWeightsError(
                KEY, f"the prompt processor's text embeddings have {prompt_utils.embedding_dim} channels but the "
                f"MVDream UNet of '{self.cfg.pretrained_model_name_or_path}' cross-attends to "
                f"{self.cross_attention_dim}",
                "use mvdream-prompt-processor with the same checkpoint (or SD-2.1's text encoder, width 1024)")
        emb = prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances,
                                               self.cfg.view_dependent_prompting)
        return emb.to(self.device)

    def finish(self, latents: torch.Tensor, grad: torch.Tensor, loss_name: str,
               extra: Dict[str, Any]) -> Dict[str, Any]:
        grad = sd_ops.clip_grad(grad, self.grad_clip_val)
        loss = sd_ops.score_distillation_loss(latents, grad)
        return {loss_name: loss, "grad_norm": grad.detach().norm(), "min_step": self.min_step,
                "max_step": self.max_step, **extra}
