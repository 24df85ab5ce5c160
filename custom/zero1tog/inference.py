"""Zero-1-to-G inference: one image in, 3D gaussians out (``../shared/reference/zero1tog.md`` section 3, the
authors' Wonder3D fork).

Steps (each a function here, so that a system's test step or a script can call them):

1. **Input** (:func:`load_image`, :func:`preprocess_rgba`): an RGBA image is recentred on its alpha's bounding box,
   scaled so that the object's longer side is ``object_fraction`` (0.75) of a square of ``size`` pixels, and
   composited on ``background`` (white), as the authors' single-image preprocessing does (object at 0.75 of the
   side, white background; their training renders are composited on white too). An RGB image without alpha needs
   its background removed first: only through the optional package ``rembg`` (imported lazily); without it
   :class:`MissingPackageError` says to install it or to pass an RGBA image.
2. **Sampling** (:func:`ddim_cfg_sample`, :meth:`Zero1toGPipeline.sample`): DDIM (``DDIMScheduler`` built from the
   base model's scheduler config: scaled-linear betas 0.00085 -> 0.012, 1000 steps, ``steps_offset`` 1, no
   ``set_alpha_to_one``, no clipping, epsilon prediction), eta 1.0, 50 steps, classifier-free guidance
   ``eps_u + s * (eps_c - eps_u)`` with s = 5.0 (the fork's evaluated ``cfg5.0`` runs; s = 1 runs the conditional
   branch only). The unconditional branch is the fork's (and its training-time condition drop's): a zero CLIP
   token and a zero condition latent; both branches go through the UNet in one batch (unconditional objects
   first), with the same camera + attribute class labels.
3. **Decode** (:meth:`Zero1toGPipeline.decode`): the 6 views x 5 attributes latents through the VAE
   (``latents / scaling_factor``), attribute images in [-1, 1] -> splatter [V, 14, H, W]
   (:func:`splatter.attribute_images_to_splatter`, the mapping preset ``wonder3d`` by default).
4. **Outputs** (:func:`write_outputs`): ``gaussians.ply`` (our 3DGS PLY, :func:`splatter_to_ply`, which the
   ``gaussian-splatting`` geometry loads with ``init_type=ply``), ``turntable.mp4`` (our splatting op,
   :func:`render_turntable`), ``attributes.png`` (5 rows of attributes x 6 views, :func:`attribute_grid`),
   ``input.png`` (the preprocessed condition image), ``splatter.pt`` and ``timing.json``.

Noise: every random number comes from one ``torch.Generator`` on the CPU, in this order: the initial latents, then
(eta > 0) each DDIM step's variance noise, all of the latents' shape; results do not depend on the device's RNG.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .splatter import ATTRIBUTES, attribute_images_to_splatter, render_splatter, splatter_to_gaussians
from .views import anchor_frame, get_view_set, splatter_view_angles, world_cameras

# the scheduler config of lambdalabs/sd-image-variations-diffusers (scheduler/scheduler_config.json, a PNDM config);
# DDIMScheduler.from_config keeps what DDIM understands
BASE_SCHEDULER_CONFIG: Dict[str, Any] = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False,
    "trained_betas": None,
}
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 5.0
DEFAULT_ETA = 1.0
REMBG_HINT = "pip install rembg"


class MissingPackageError(ImportError):
    """An optional package a step needs is not installed; the message says what to do instead."""


# ------------------------------------------------------------------------------------------------ input image
def load_image(path: str) -> Tuple[np.ndarray, bool]:
    """``(uint8 [H, W, 4] RGBA, has_alpha)`` of an image file (read only). Without an alpha channel (or with an
    alpha that is opaque everywhere) the alpha is 255 and ``has_alpha`` False."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
        rgba = np.asarray(im.convert("RGBA")).copy()
    if has_alpha and rgba[..., 3].min() == 255:
        has_alpha = False
    return rgba, has_alpha


def remove_background(rgba: np.ndarray, source: str = "the input image") -> np.ndarray:
    """Background removal with the optional package ``rembg`` (imported here, only when needed)."""
    try:
        import rembg  # noqa: F401
    except ImportError as e:
        raise MissingPackageError(
            f"{source} has no alpha channel, and removing its background needs the optional package 'rembg', "
            f"which is not installed. Either install it ({REMBG_HINT}) or pass an RGBA image whose background is "
            f"transparent (e.g. cut out in an image editor).") from e
    from PIL import Image

    out = rembg.remove(Image.fromarray(rgba[..., :3], mode="RGB"))
    return np.asarray(out.convert("RGBA")).copy()


def preprocess_rgba(rgba: Union[np.ndarray, torch.Tensor], size: int = 320, object_fraction: float = 0.75,
                    background: Sequence[float] = (1.0, 1.0, 1.0), alpha_threshold: float = 0.5,
                    recentre: bool = True) -> torch.Tensor:
    """RGBA [H, W, 4] (uint8, or float in [0, 1]) -> the condition image, float RGB [3, size, size] in [0, 1].

    With ``recentre``: the crop is the bounding box of ``alpha > alpha_threshold``, scaled (antialiased, on
    premultiplied colours) so its longer side is ``object_fraction * size``, centred in the square; then composited
    on ``background``. Without: the image is padded to a square (transparent) and resized."""
    x = torch.as_tensor(np.asarray(rgba))
    x = x.float() / 255.0 if not x.is_floating_point() else x.float()
    if x.dim() != 3 or x.shape[-1] != 4:
        raise ValueError(f"preprocess_rgba: expected RGBA [H, W, 4], got {tuple(x.shape)}")
    if not 0.0 < object_fraction <= 1.0:
        raise ValueError(f"object_fraction must be in (0, 1], got {object_fraction}")
    a = x[..., 3]
    if recentre:
        ys, xs = torch.nonzero(a > alpha_threshold, as_tuple=True)
        if ys.numel() == 0:
            raise ValueError("the image's alpha channel is empty (no pixel above the threshold): nothing to recentre")
        x = x[int(ys.min()): int(ys.max()) + 1, int(xs.min()): int(xs.max()) + 1]
        target = max(1, int(round(object_fraction * size)))
    else:
        target = size
    h, w = x.shape[:2]
    k = target / max(h, w)
    nh, nw = max(1, int(round(h * k))), max(1, int(round(w * k)))
    pm = torch.cat([x[..., :3] * x[..., 3:], x[..., 3:]], -1).permute(2, 0, 1)[None]  # premultiplied
    pm = F.interpolate(pm, (nh, nw), mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)
    canvas = torch.zeros(4, size, size)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[:, top: top + nh, left: left + nw] = pm
    bg = torch.as_tensor(background, dtype=torch.float32).view(3, 1, 1)
    return (canvas[:3] + bg * (1.0 - canvas[3:])).clamp(0, 1)


def prepare_input(path: str, size: int = 320, object_fraction: float = 0.75,
                  background: Sequence[float] = (1.0, 1.0, 1.0), remove_bg: Optional[bool] = None) -> torch.Tensor:
    """The condition image [3, size, size] of an image file. ``remove_bg``: None (only when the image has no alpha),
    True (always, with rembg), False (never: an image without alpha is used as it is, padded to a square)."""
    rgba, has_alpha = load_image(path)
    if remove_bg or (remove_bg is None and not has_alpha):
        rgba = remove_background(rgba, source=os.path.basename(path))
        has_alpha = True
    return preprocess_rgba(rgba, size, object_fraction, background, recentre=has_alpha)


# ------------------------------------------------------------------------------------------------ sampling
def make_scheduler(config: Optional[Dict[str, Any]] = None) -> Any:
    """``DDIMScheduler`` from a scheduler config (default: the base model's, :data:`BASE_SCHEDULER_CONFIG`)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(dict(config or BASE_SCHEDULER_CONFIG))


EpsFn = Callable[[torch.Tensor, Any, Tuple[str, ...]], torch.Tensor]


def ddim_cfg_sample(eps_fn: EpsFn, shape: Sequence[int], scheduler: Any, num_inference_steps: int = DEFAULT_STEPS,
                    guidance_scale: float = DEFAULT_GUIDANCE, eta: float = DEFAULT_ETA,
                    generator: Optional[torch.Generator] = None, device: Any = "cpu",
                    dtype: torch.dtype = torch.float32, latents: Optional[torch.Tensor] = None) -> torch.Tensor:
    """DDIM with classifier-free guidance.

    ``eps_fn(x [*shape], t, branches)`` returns the noise predictions of ``branches`` stacked on a new first axis
    ([len(branches), *shape]); ``branches`` is ``("cond",)`` when ``guidance_scale == 1`` (no guidance: the
    conditional branch alone) else ``("uncond", "cond")``, and the guided prediction is
    ``eps_u + guidance_scale * (eps_c - eps_u)``. Noise from ``generator`` (CPU): initial latents (unless given),
    then per step the variance noise (eta > 0)."""
    scheduler.set_timesteps(int(num_inference_steps), device=device)
    if latents is None:
        latents = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    x = latents.to(device=device, dtype=torch.float32) * float(scheduler.init_noise_sigma)
    branches = ("cond",) if float(guidance_scale) == 1.0 else ("uncond", "cond")
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        eps = eps_fn(x_in.to(dtype), t, branches).float()
        if eps.shape[0] != len(branches):
            raise ValueError(f"eps_fn returned {eps.shape[0]} branches for {branches}")
        e = eps[0] if len(branches) == 1 else eps[0] + float(guidance_scale) * (eps[1] - eps[0])
        noise = None
        if eta > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(device)
        x = scheduler.step(e, t, x, eta=float(eta), variance_noise=noise).prev_sample
    return x


def class_labels(view_set: str, input_elevation_deg: float, num_objects: int, num_attributes: int = 5
                 ) -> torch.Tensor:
    """The camera + attribute labels of a folded batch [(D B V), 16]: condition elevation, each splatter view's
    elevation and azimuth relative to the input (radians), attribute one-hot."""
    from .model.unet import folded_class_labels

    el, az = splatter_view_angles(view_set, input_elevation_deg, 0.0)
    b = int(num_objects)
    return folded_class_labels(torch.full((b,), math.radians(input_elevation_deg)),
                               el.deg2rad()[None].expand(b, -1), az.deg2rad()[None].expand(b, -1),
                               attributes=range(num_attributes), num_attributes=num_attributes)


@dataclass
class InferenceConfig:
    num_inference_steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    eta: float = DEFAULT_ETA
    view_set: str = "wonder3d"
    mapping: str = "wonder3d"
    # the input camera's elevation (a photo has none): the middle of make_data's input elevations (0-30 deg)
    input_elevation_deg: float = 15.0
    distance: float = 1.5
    vae_batch: int = 30  # latents per VAE decode call


class Zero1toGPipeline:
    """The UNet, the condition encoder (its VAE also decodes) and a DDIM scheduler. ``pipe(rgb [B, 3, H, W] in
    [0, 1], generator)`` -> dict with ``latents`` [B, 5, V, 4, h, w], ``attribute_images`` [B, 5, V, 3, H, W] in
    [-1, 1], ``splatter`` [B, V, 14, H, W] and ``seconds`` (wall time of the whole call, synchronised)."""

    def __init__(self, unet: Any, condition_encoder: Any, scheduler: Any = None,
                 cfg: Optional[InferenceConfig] = None) -> None:
        self.unet = unet.eval()
        self.encoder = condition_encoder.eval()
        self.scheduler = scheduler if scheduler is not None else make_scheduler()
        self.cfg = cfg or InferenceConfig()
        get_view_set(self.cfg.view_set)
        nv = int(self.unet.config.num_views)
        if nv != len(get_view_set(self.cfg.view_set).azimuth_deg):
            raise ValueError(f"the UNet makes {nv} views, view set {self.cfg.view_set!r} has "
                             f"{len(get_view_set(self.cfg.view_set).azimuth_deg)}")

    @classmethod
    def from_pretrained(cls, name_or_path: str, torch_dtype: Optional[torch.dtype] = None, device: Any = None,
                        cfg: Optional[InferenceConfig] = None, cond_size: Optional[int] = None) -> "Zero1toGPipeline":
        """``unet/``, ``vae/``, ``image_encoder/`` (and ``scheduler/`` if present, else the base config) of a hub id
        or a local folder. A base SD-image-variations folder is grown into an untrained Zero-1-to-G UNet."""
        from .model.conditioning import ConditionEncoder
        from .model.loading import load_unet

        unet = load_unet(name_or_path, "unet", torch_dtype=torch_dtype)
        size = cond_size or int(unet.config.sample_size) * 8
        enc = ConditionEncoder.from_pretrained(name_or_path, cond_size=size, torch_dtype=torch_dtype)
        sched_cfg = _read_scheduler_config(name_or_path)
        pipe = cls(unet, enc, make_scheduler(sched_cfg), cfg)
        if device is not None:
            pipe.to(device)
        return pipe

    def to(self, device: Any) -> "Zero1toGPipeline":
        self.unet.to(device)
        self.encoder.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def num_views(self) -> int:
        return int(self.unet.config.num_views)

    @property
    def num_attributes(self) -> int:
        return int(self.unet.config.num_attributes)

    def latent_shape(self, num_objects: int) -> Tuple[int, ...]:
        s = int(self.unet.config.sample_size)
        return (int(num_objects), self.num_attributes, self.num_views, int(self.unet.config.out_channels), s, s)

    @torch.no_grad()
    def sample(self, rgb: torch.Tensor, generator: Optional[torch.Generator] = None,
               latents: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Latents [B, 5, V, 4, h, w] for condition images [B, 3, H, W] in [0, 1]."""
        from .model.conditioning import expand_condition
        from .model.unet import fold, unfold

        c, dev, dt = self.cfg, self.device, self.dtype
        b, d, v = rgb.shape[0], self.num_attributes, self.num_views
        cond_lat, tokens = self.encoder.encode(rgb.to(dev))
        null = {"uncond": (torch.zeros_like(cond_lat), torch.zeros_like(tokens)), "cond": (cond_lat, tokens)}
        labels = {n: class_labels(c.view_set, c.input_elevation_deg, n * b, d).to(dev, dt) for n in (1, 2)}

        def eps_fn(x: torch.Tensor, t: Any, branches: Tuple[str, ...]) -> torch.Tensor:
            k = len(branches)
            lat = torch.cat([null[br][0] for br in branches])  # [k B, 4, h, w], branch-major
            tok = torch.cat([null[br][1] for br in branches])
            xs = fold(x.repeat(k, *([1] * (x.dim() - 1))))  # objects: branch-major, as lat / tok
            inp = torch.cat([xs, expand_condition(lat, d, v).to(dt)], 1)
            out = self.unet(inp, t, expand_condition(tok, d, v).to(dt), class_labels=labels[k],
                            num_attributes=d).sample
            return unfold(out, num_objects=k * b, num_attributes=d).reshape(k, b, *x.shape[1:])

        return ddim_cfg_sample(eps_fn, self.latent_shape(b), self.scheduler, c.num_inference_steps,
                               c.guidance_scale, c.eta, generator, dev, dt, latents)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Latents [B, 5, V, 4, h, w] -> (attribute images [B, 5, V, 3, H, W] in [-1, 1], splatter [B, V, 14, H, W])."""
        vae = self.encoder.vae
        flat = latents.reshape(-1, *latents.shape[-3:]) / vae.config.scaling_factor
        n = max(1, int(self.cfg.vae_batch))
        imgs = torch.cat([vae.decode(flat[i: i + n].to(vae.dtype)).sample.float() for i in range(0, len(flat), n)])
        images = imgs.reshape(*latents.shape[:3], *imgs.shape[1:]).clamp(-1, 1)
        return images, attribute_images_to_splatter(images, self.cfg.mapping)

    @torch.no_grad()
    def __call__(self, rgb: torch.Tensor, generator: Optional[torch.Generator] = None,
                 latents: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        if rgb.dim() == 3:
            rgb = rgb[None]
        _sync(self.device)
        t0 = time.perf_counter()
        lat = self.sample(rgb, generator, latents)
        images, splatter = self.decode(lat)
        _sync(self.device)
        return {"latents": lat, "attribute_images": images, "splatter": splatter,
                "seconds": time.perf_counter() - t0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _read_scheduler_config(name_or_path: str) -> Optional[Dict[str, Any]]:
    """``scheduler/scheduler_config.json`` of a folder or hub repository, or None (then the base config)."""
    from threestudio.utils.weights import is_local_path

    if is_local_path(name_or_path):
        p = os.path.join(os.path.expanduser(name_or_path), "scheduler", "scheduler_config.json")
        if not os.path.isfile(p):
            return None
    else:
        try:
            from huggingface_hub import hf_hub_download

            p = hf_hub_download(name_or_path, "scheduler_config.json", subfolder="scheduler")
        except Exception:  # noqa: BLE001 - offline or absent: the base config is the authors' anyway
            return None
    with open(p) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


# ------------------------------------------------------------------------------------------------ outputs
def splatter_to_ply(splatter: torch.Tensor, path: str, prune_opacity: float = 0.0) -> Tuple[str, int]:
    """One object's splatter [V, 14, H, W] -> our 3DGS PLY (log scales, logit opacities, SH DC colour; the
    ``gaussian-splatting`` geometry's format). Gaussians with opacity < ``prune_opacity`` are left out (default:
    none). Returns ``(path, number of gaussians)``."""
    from threestudio.models.geometry.gaussian_splatting import write_gaussian_ply
    from threestudio.ops.splatting import rgb_to_sh0

    g = {k: v.detach().float().cpu() for k, v in splatter_to_gaussians(splatter).items()}
    keep = g["opacities"] >= prune_opacity if prune_opacity > 0 else torch.ones_like(g["opacities"], dtype=torch.bool)
    op = g["opacities"][keep].clamp(1e-6, 1 - 1e-6)
    write_gaussian_ply(path, g["means"][keep], torch.log(g["scales"][keep].clamp_min(1e-30)),
                       F.normalize(g["quats"][keep], dim=-1), torch.logit(op),
                       rgb_to_sh0(g["colors"][keep].clamp(0, 1))[:, None, :])
    return path, int(keep.sum())


def turntable_cameras(n_frames: int = 60, elevation_deg: float = 15.0, distance: float = 1.5,
                      view_set: str = "wonder3d") -> torch.Tensor:
    """OpenGL c2w [n, 4, 4] in the object frame (anchored at splatter view 0 of ``view_set`` for an input at
    ``elevation_deg``, azimuth 0, as :func:`views.object_cameras`), orbiting the object at the input elevation from
    the input azimuth through 360 degrees."""
    el0, az0 = splatter_view_angles(view_set, elevation_deg, 0.0)
    frame = anchor_frame(world_cameras(el0[:1], az0[:1], distance)[0], distance)
    el = torch.full((n_frames,), float(elevation_deg))
    az = torch.arange(n_frames, dtype=torch.float32) * (360.0 / max(1, n_frames))
    return frame @ world_cameras(el, az, distance)


@torch.no_grad()
def render_turntable(splatter: torch.Tensor, n_frames: int = 60, resolution: int = 256,
                     elevation_deg: float = 15.0, distance: float = 1.5, view_set: str = "wonder3d",
                     background: Sequence[float] = (1.0, 1.0, 1.0), chunk: int = 8) -> torch.Tensor:
    """Frames [n, res, res, 3] in [0, 1] of one object's splatter [V, 14, H, W], through our splatting op, with the
    view set's field of view."""
    c2w = turntable_cameras(n_frames, elevation_deg, distance, view_set).to(splatter.device)
    fovy_deg = get_view_set(view_set).fovy_deg
    frames = [render_splatter(splatter.float(), c2w[i: i + chunk], math.radians(fovy_deg), resolution, resolution,
                              background)["rgb"].clamp(0, 1).cpu() for i in range(0, n_frames, chunk)]
    return torch.cat(frames)


def attribute_grid(images: torch.Tensor, pad: int = 2) -> np.ndarray:
    """One object's attribute images [5, V, 3, H, W] in [-1, 1] -> uint8 [5 (H + pad) - pad, V (W + pad) - pad, 3]:
    a row per attribute (:data:`splatter.ATTRIBUTES` order), a column per view, white gaps."""
    d, v, _, h, w = images.shape
    x = ((images.float().clamp(-1, 1) + 1) * 0.5).cpu()
    grid = torch.ones(3, d * (h + pad) - pad, v * (w + pad) - pad)
    for i in range(d):
        for j in range(v):
            grid[:, i * (h + pad): i * (h + pad) + h, j * (w + pad): j * (w + pad) + w] = x[i, j]
    return (grid.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


@dataclass
class OutputConfig:
    turntable_frames: int = 60
    turntable_resolution: int = 256
    fps: int = 30
    prune_opacity: float = 0.0
    background: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    extra: Dict[str, Any] = field(default_factory=dict)


def write_outputs(out_dir: str, result: Dict[str, Any], condition: torch.Tensor, cfg: InferenceConfig,
                  ocfg: Optional[OutputConfig] = None, index: int = 0) -> Dict[str, str]:
    """Write object ``index`` of a pipeline result into ``out_dir`` (created; nothing is written elsewhere):
    ``gaussians.ply``, ``turntable.mp4`` (GIF without ffmpeg), ``attributes.png``, ``input.png``, ``splatter.pt``,
    ``timing.json``. Returns ``{kind: path}``."""
    from threestudio.utils.saving import atomic_write_bytes, atomic_write_text, encode_png, write_video

    ocfg = ocfg or OutputConfig()
    os.makedirs(out_dir, exist_ok=True)
    splatter = result["splatter"][index]
    paths: Dict[str, str] = {}
    paths["ply"], n = splatter_to_ply(splatter, os.path.join(out_dir, "gaussians.ply"), ocfg.prune_opacity)
    grid = attribute_grid(result["attribute_images"][index])
    atomic_write_bytes(os.path.join(out_dir, "attributes.png"), encode_png(grid))
    paths["attributes"] = os.path.join(out_dir, "attributes.png")
    cond = (condition[index] if condition.dim() == 4 else condition).permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    atomic_write_bytes(os.path.join(out_dir, "input.png"), encode_png((cond * 255.0 + 0.5).astype(np.uint8)))
    paths["input"] = os.path.join(out_dir, "input.png")
    tmp = os.path.join(out_dir, ".splatter.pt.tmp")
    torch.save(splatter.detach().cpu(), tmp)
    os.replace(tmp, os.path.join(out_dir, "splatter.pt"))
    paths["splatter"] = os.path.join(out_dir, "splatter.pt")
    t0 = time.perf_counter()
    if ocfg.turntable_frames > 0:
        frames = render_turntable(splatter, ocfg.turntable_frames, ocfg.turntable_resolution,
                                  cfg.input_elevation_deg, cfg.distance, cfg.view_set, ocfg.background)
        u8 = [(f.numpy() * 255.0 + 0.5).astype(np.uint8) for f in frames]
        paths["turntable"] = write_video(os.path.join(out_dir, "turntable.mp4"), u8, fps=ocfg.fps)
    render_s = time.perf_counter() - t0
    b = int(result["splatter"].shape[0])
    timing = {"seconds_per_object": float(result["seconds"]) / b, "seconds_batch": float(result["seconds"]),
              "objects": b, "turntable_seconds": render_s, "num_gaussians": n, "config": asdict(cfg), **ocfg.extra}
    atomic_write_text(os.path.join(out_dir, "timing.json"), json.dumps(timing, indent=2))
    paths["timing"] = os.path.join(out_dir, "timing.json")
    return paths


def image_to_gaussians(image_path: str, out_dir: str, pipe: Zero1toGPipeline, seed: int = 0,
                       input_size: int = 320, remove_bg: Optional[bool] = None,
                       ocfg: Optional[OutputConfig] = None) -> Dict[str, Any]:
    """The whole thing for one image file; the input file and its folder are only read. Returns the written paths
    and the timing."""
    if os.path.abspath(out_dir) == os.path.abspath(os.path.dirname(os.path.abspath(image_path))):
        raise ValueError(f"the output folder {out_dir} is the input image's folder; choose another (the input "
                         "folder is never written to)")
    rgb = prepare_input(image_path, input_size, remove_bg=remove_bg, background=(ocfg or OutputConfig()).background)
    gen = torch.Generator().manual_seed(int(seed))
    result = pipe(rgb[None], gen)
    paths = write_outputs(out_dir, result, rgb, pipe.cfg, ocfg)
    return {"paths": paths, "seconds_per_object": result["seconds"], "splatter": result["splatter"][0]}


__all__ = ["ATTRIBUTES", "BASE_SCHEDULER_CONFIG", "InferenceConfig", "MissingPackageError", "OutputConfig",
           "Zero1toGPipeline", "attribute_grid", "class_labels", "ddim_cfg_sample", "image_to_gaussians",
           "load_image", "make_scheduler", "prepare_input", "preprocess_rgba", "remove_background",
           "render_turntable", "splatter_to_ply", "turntable_cameras", "write_outputs"]
