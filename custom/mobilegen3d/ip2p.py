"""``instruct-pix2pix-guidance``: InstructPix2Pix image editing, as Instruct-NeRF2NeRF uses it.

Not a score-distillation loss: :meth:`InstructPix2PixGuidance.edit_image` takes a render of the scene and the
photo it was rendered for, and returns an edited image that replaces the photo in the training set (the
``in2n-system``'s iterative dataset update).

Weights: ``pretrained_model_name_or_path`` is the hub id ``timbrooks/instruct-pix2pix`` (default; downloaded into the
Hugging Face cache on first use) or a local diffusers folder with ``unet/`` (a Stable Diffusion 1.5 UNet with 8
input channels: 4 noisy latents + 4 latents of the conditioning image), ``vae/``, ``text_encoder/`` (CLIP),
``tokenizer/`` and ``scheduler/``. A missing or incomplete model stops the run before training with a
:class:`~threestudio.utils.weights.PretrainedWeightsError` that names the key, where it looked and how to download
the weights. fp16 on CUDA, fp32 on the CPU (``half_precision_weights``). Tests build a tiny random folder with
:func:`threestudio.utils.weights.save_random_instruct_pix2pix`.

One edit (``edit_image``), as in Instruct-NeRF2NeRF's ``ip2p.py`` (facts checked against its code):

1. ``T ~ U{int(1000 t_min), ..., int(1000 t_max)}`` (one integer per call); the DDIM schedule of
   ``diffusion_steps`` steps is laid out over ``[0, T)`` with diffusers' "leading" spacing and ``steps_offset`` 1:
   ``t_i = i * (T // n) + 1`` for ``i = n-1, ..., 0`` (Instruct-NeRF2NeRF gets this by setting the scheduler's
   ``num_train_timesteps`` to ``T`` before ``set_timesteps``; the alphas stay those of the 1000-step schedule);
2. the render is VAE-encoded (a *sample* of the posterior, times the VAE's ``scaling_factor`` 0.18215) and noised to
   the first timestep of that schedule;
3. the conditioning photo is VAE-encoded to the posterior's *mode*, **not** scaled (InstructPix2Pix was trained
   that way), and the unconditional image latents are zeros;
4. each DDIM step (eta 0) runs the UNet on three rows ``[x | photo], [x | photo], [x | 0]`` with text embeddings
   ``[instruction, "", ""]`` and combines the outputs as
   ``eps = eps_uncond + s_text (eps_text - eps_image) + s_image (eps_image - eps_uncond)``;
5. the final latents are decoded (``/ scaling_factor``) to an image in [0, 1].

The DDIM scheduler is built from ``scheduler/``'s betas with Instruct-NeRF2NeRF's DDIM settings
(``clip_sample: false``, ``set_alpha_to_one: false``, ``steps_offset: 1``, ``timestep_spacing: leading``):
``timbrooks/instruct-pix2pix`` ships an Euler-ancestral config, and reading it into a DDIM scheduler as it is would
give ``linspace`` spacing and sample clipping, which Instruct-NeRF2NeRF (whose DDIM comes from Stable Diffusion
1.4's config) does not have. Images whose sides are not multiples of 8 are resized to the nearest multiples of 8 for
the VAE and back afterwards. All randomness (T, the posterior sample, the noise) comes from ``generator``.

Text embeddings: :meth:`encode_prompt` returns ``[instruction, "", ""]`` [3, 77, D] (as diffusers'
``StableDiffusionInstructPix2PixPipeline._encode_prompt`` with the empty negative prompt) and caches them per
prompt; :meth:`release_text_encoder` frees the CLIP encoder once the prompts are encoded.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

import threestudio
from threestudio.models.guidance.base import BaseGuidance
from threestudio.utils.log import info
from threestudio.utils.misc import cleanup, get_device
from threestudio.utils.weights import PretrainedWeightsError, check_pretrained, load_pretrained

from .schema import IP2P_HUB_ID, InstructPix2PixGuidanceConfig

KEY = "system.guidance.pretrained_model_name_or_path"
WHAT = "InstructPix2Pix"
HUB_ID = IP2P_HUB_ID
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# Instruct-NeRF2NeRF's DDIM (Stable Diffusion 1.4's scheduler config, read by DDIMScheduler)
DDIM_SETTINGS = dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")


def ddim_timesteps(T: int, n: int, offset: int = 1) -> List[int]:
    """DDIM timesteps of ``n`` steps laid out over ``[0, T)`` ("leading" spacing): ``i * (T // n) + offset`` for
    ``i = n-1 .. 0``. With ``n > T`` the stride would be 0: then ``T`` steps of stride 1 are used."""
    n = max(1, min(int(n), int(T)))
    stride = int(T) // n
    return [i * stride + int(offset) for i in range(n - 1, -1, -1)]


def ip2p_guided_noise(eps: torch.Tensor, guidance_scale: float, image_guidance_scale: float) -> torch.Tensor:
    """InstructPix2Pix's classifier-free guidance of a UNet output for the rows [text+image, image, unconditional]
    (3B rows): ``eps_u + s_T (eps_T - eps_I) + s_I (eps_I - eps_u)``."""
    eps_text, eps_image, eps_uncond = eps.chunk(3)
    return eps_uncond + guidance_scale * (eps_text - eps_image) + image_guidance_scale * (eps_image - eps_uncond)


@threestudio.register("instruct-pix2pix-guidance")
class InstructPix2PixGuidance(BaseGuidance):
    Config = InstructPix2PixGuidanceConfig

    cfg: Config

    # ------------------------------------------------------------------ building
    @classmethod
    def preflight(cls, cfg: Any) -> None:
        """Start-up check without reading weights: the folder (or hub id) has every component."""
        from threestudio.utils.config import parse_structured

        c = parse_structured(cls.Config, cfg)
        check_pretrained(c.pretrained_model_name_or_path, COMPONENTS, KEY, WHAT, hub_id=HUB_ID)

    def configure(self, device: Optional[Any] = None) -> None:
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        c = self.cfg
        _check_edit_settings(c.t_min, c.t_max, c.diffusion_steps, "system.guidance")
        self.device = torch.device(device) if device is not None else get_device()
        half = c.half_precision_weights if c.half_precision_weights is not None else self.device.type == "cuda"
        self.weights_dtype = torch.float16 if half else torch.float32
        name = c.pretrained_model_name_or_path
        self.preflight(c)
        info(f"Loading InstructPix2Pix from {name} ({str(self.weights_dtype).replace('torch.', '')})")
        kw: Dict[str, Any] = {"torch_dtype": self.weights_dtype}
        if c.variant:
            kw["variant"] = c.variant

        def load(cls: Any, sub: str, **extra: Any) -> Any:
            return load_pretrained(cls, name, sub, KEY, WHAT, hub_id=HUB_ID, **extra)

        self.unet = load(UNet2DConditionModel, "unet", **kw)
        self.vae = load(AutoencoderKL, "vae", **kw)
        self.tokenizer = load(CLIPTokenizer, "tokenizer")
        self.text_encoder = load(CLIPTextModel, "text_encoder", **kw)
        base = load(DDIMScheduler, "scheduler")
        self.scheduler = DDIMScheduler.from_config(base.config, **DDIM_SETTINGS)
        latent = int(self.vae.config.latent_channels)
        if int(self.unet.config.in_channels) != 2 * latent:
            raise PretrainedWeightsError(
                KEY, f"'{name}' is not an InstructPix2Pix model: its UNet takes {self.unet.config.in_channels} input "
                f"channels, InstructPix2Pix's takes {2 * latent} (noisy latents + image-conditioning latents)",
                f"point {KEY} at {HUB_ID} or a copy of it")
        if int(self.text_encoder.config.hidden_size) != int(self.unet.config.cross_attention_dim):
            raise PretrainedWeightsError(
                KEY, f"'{name}': the text encoder makes {self.text_encoder.config.hidden_size}-channel embeddings but "
                f"the UNet cross-attends to {self.unet.config.cross_attention_dim}; text_encoder/ and unet/ come from "
                f"different models", "point the key at one complete InstructPix2Pix folder")
        if self.scheduler.config.prediction_type != "epsilon":
            raise PretrainedWeightsError(
                KEY, f"'{name}': scheduler prediction_type {self.scheduler.config.prediction_type!r}; "
                f"InstructPix2Pix predicts the noise ('epsilon')", "use the model's own scheduler/ folder")
        for m in (self.unet, self.vae, self.text_encoder):
            m.eval().requires_grad_(False)
        if c.enable_attention_slicing:
            self.unet.set_attention_slice(1)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self._embeddings: Dict[str, torch.Tensor] = {}
        self.to(self.device)
        cleanup()

    def to(self, device: Any) -> "InstructPix2PixGuidance":
        self.device = torch.device(device)
        for m in (self.unet, self.vae, self.text_encoder):
            if m is not None:
                m.to(self.device)
        self.alphas = self.scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.final_alpha = float(self.scheduler.final_alpha_cumprod)
        self._embeddings = {k: v.to(self.device) for k, v in self._embeddings.items()}
        return self

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """``[prompt, "", ""]`` CLIP embeddings [3, L, D] (float32; cached per prompt): the rows of the three-way
        classifier-free guidance (text + image, image only, unconditional)."""
        if prompt in self._embeddings:
            return self._embeddings[prompt]
        if self.text_encoder is None:
            raise RuntimeError(f"InstructPix2PixGuidance: the text encoder was released; prompt {prompt!r} was not "
                               f"encoded before release_text_encoder()")
        tok = self.tokenizer([prompt, ""], padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        ids = tok.input_ids.to(self.device)
        mask = tok.attention_mask.to(self.device) if getattr(self.text_encoder.config, "use_attention_mask",
                                                             False) else None
        emb = self.text_encoder(ids, attention_mask=mask)[0].float()
        out = torch.cat([emb[0:1], emb[1:2], emb[1:2]], 0)
        self._embeddings[prompt] = out
        return out

    def release_text_encoder(self) -> None:
        """Free the CLIP text encoder (the cached embeddings stay)."""
        self.text_encoder = None
        cleanup()

    # ------------------------------------------------------------------ latents
    def encode_render(self, imgs: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """[B, 3, h, w] in [0, 1] -> a posterior sample times the scaling factor [B, 4, h/8, w/8] (float32)."""
        posterior = self.vae.encode((2.0 * imgs - 1.0).to(self.weights_dtype)).latent_dist
        return _posterior_sample(posterior, generator).float() * self.scaling_factor

    def encode_condition(self, imgs: torch.Tensor) -> torch.Tensor:
        """[B, 3, h, w] in [0, 1] -> the posterior's mode [B, 4, h/8, w/8], unscaled (float32)."""
        return self.vae.encode((2.0 * imgs - 1.0).to(self.weights_dtype)).latent_dist.mode().float()

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 4, h, w] -> images [B, 3, 8h, 8w] in [0, 1] (float32)."""
        imgs = self.vae.decode((latents / self.scaling_factor).to(self.weights_dtype)).sample.float()
        return (imgs * 0.5 + 0.5).clamp(0.0, 1.0)

    def unet_rows(self, latents: torch.Tensor, t: int, text_embeddings: torch.Tensor,
                  image_cond_latents: torch.Tensor) -> torch.Tensor:
        """The UNet's noise predictions [3B, 4, h, w] (float32) for the rows [text+image, image, unconditional]:
        latents repeated 3 times, concatenated channel-wise with ``image_cond_latents`` ([photo, photo, 0])."""
        x = torch.cat([latents] * 3, 0)
        x = torch.cat([x, image_cond_latents], 1).to(self.weights_dtype)
        tt = torch.full((x.shape[0],), int(t), device=self.device, dtype=torch.long)
        return self.unet(x, tt, encoder_hidden_states=text_embeddings.to(self.weights_dtype),
                         return_dict=False)[0].float()

    def ddim_step(self, eps: torch.Tensor, t: int, t_prev: int, x: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM step (eta 0, no clipping) from ``t`` to ``t_prev`` (negative: the final step)."""
        a_t = self.alphas[int(t)]
        a_prev = self.alphas[int(t_prev)] if t_prev >= 0 else torch.tensor(self.final_alpha, device=x.device)
        x0 = (x - (1.0 - a_t).sqrt() * eps) / a_t.sqrt()
        return a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * eps

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        a = self.alphas[int(t)]
        return a.sqrt() * latents + (1.0 - a).sqrt() * noise

    def sample_T(self, t_min: float, t_max: float, generator: Optional[torch.Generator] = None) -> int:
        """T ~ U{int(N t_min), ..., int(N t_max)} (N = num_train_timesteps), as Instruct-NeRF2NeRF draws it."""
        lo, hi = int(self.num_train_timesteps * t_min), int(self.num_train_timesteps * t_max)
        dev = generator.device if generator is not None else torch.device("cpu")
        return int(torch.randint(lo, hi + 1, (1,), generator=generator, device=dev))

    # ------------------------------------------------------------------ the edit
    @torch.no_grad()
    def edit_image(self, render: torch.Tensor, original: torch.Tensor, text_embeddings: torch.Tensor,
                   t_min: Optional[float] = None, t_max: Optional[float] = None,
                   diffusion_steps: Optional[int] = None, guidance_scale: Optional[float] = None,
                   image_guidance_scale: Optional[float] = None, generator: Optional[torch.Generator] = None,
                   return_info: bool = False) -> Any:
        """Edit ``render`` [B, H, W, 3] (in [0, 1]) conditioned on ``original`` [B, H, W, 3] (the photo) and
        ``text_embeddings`` ([3, L, D] from :meth:`encode_prompt`, or [3B, L, D]). Returns the edited images
        [B, H, W, 3] in [0, 1] (float32, on this guidance's device); with ``return_info``, also a dict with the
        starting ``T`` and the ``timesteps``. Settings left None take the Config's values."""
        c = self.cfg
        t_min = c.t_min if t_min is None else float(t_min)
        t_max = c.t_max if t_max is None else float(t_max)
        steps = c.diffusion_steps if diffusion_steps is None else int(diffusion_steps)
        gs = c.guidance_scale if guidance_scale is None else float(guidance_scale)
        igs = c.image_guidance_scale if image_guidance_scale is None else float(image_guidance_scale)
        _check_edit_settings(t_min, t_max, steps, "edit_image")
        if render.dim() != 4 or render.shape[-1] != 3 or original.shape != render.shape:
            raise ValueError(f"edit_image: render and original must both be [B, H, W, 3]; got "
                             f"{tuple(render.shape)} and {tuple(original.shape)}")
        B, H, W, _ = render.shape
        size = (max(8, int(round(H / 8.0)) * 8), max(8, int(round(W / 8.0)) * 8))
        img = _resize(render.to(self.device, torch.float32).permute(0, 3, 1, 2), size).clamp(0, 1)
        cond = _resize(original.to(self.device, torch.float32).permute(0, 3, 1, 2), size).clamp(0, 1)
        emb = text_embeddings.to(self.device)
        if emb.shape[0] == 3 and B > 1:
            emb = emb.repeat_interleave(B, dim=0)  # [text x B, uncond x B, uncond x B]
        if emb.shape[0] != 3 * B:
            raise ValueError(f"edit_image: text_embeddings has {emb.shape[0]} rows; expected 3 (from encode_prompt) "
                             f"or 3 x batch ({3 * B})")

        T = self.sample_T(t_min, t_max, generator)
        timesteps = ddim_timesteps(T, steps, int(self.scheduler.config.steps_offset))
        latents = self.encode_render(img, generator)
        cond_lat = self.encode_condition(cond)
        image_cond = torch.cat([cond_lat, cond_lat, torch.zeros_like(cond_lat)], 0)
        noise = torch.randn(latents.shape, generator=generator, device=generator.device if generator is not None
                            else self.device).to(self.device)
        x = self.add_noise(latents, noise, timesteps[0])
        stride = T // len(timesteps)
        for t in timesteps:
            eps = ip2p_guided_noise(self.unet_rows(x, t, emb, image_cond), gs, igs)
            x = self.ddim_step(eps, t, t - stride, x)
        out = self.decode_latents(x)
        if tuple(out.shape[-2:]) != (H, W):
            out = _resize(out, (H, W)).clamp(0, 1)
        out = out.permute(0, 2, 3, 1).contiguous()
        if return_info:
            return out, {"T": T, "timesteps": timesteps}
        return out


def _check_edit_settings(t_min: float, t_max: float, steps: int, where: str) -> None:
    if not 0.0 <= t_min <= t_max <= 1.0:
        raise ValueError(f"{where}: need 0 <= t_min <= t_max <= 1, got t_min={t_min}, t_max={t_max}")
    if steps < 1:
        raise ValueError(f"{where}: diffusion_steps must be >= 1, got {steps}")


def _resize(x: torch.Tensor, size: Any) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def _posterior_sample(posterior: Any, generator: Optional[torch.Generator]) -> torch.Tensor:
    """A sample of diffusers' DiagonalGaussianDistribution, drawn with ``generator`` (on its own device)."""
    mean, std = posterior.mean, posterior.std
    dev = generator.device if generator is not None else mean.device
    eps = torch.randn(mean.shape, generator=generator, device=dev, dtype=torch.float32)
    return mean + std * eps.to(mean.device, mean.dtype)
