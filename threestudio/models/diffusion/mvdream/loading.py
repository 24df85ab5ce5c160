"""Loading MVDream: the ``sd-v2.1-base-4view.pt`` checkpoint (by key mapping) or a diffusers-format folder.

Sources (``pretrained_model_name_or_path`` with ``checkpoint_file``):

- a checkpoint file (``.pt``/``.ckpt``/``.pth``/``.safetensors``): one flat dict of 1,244 tensors, as MVDream's own
  loader reads it: ``model.diffusion_model.*`` (the multi-view UNet), ``first_stage_model.*`` (the autoencoder),
  ``cond_stage_model.model.*`` (OpenCLIP ViT-H text tower) and 12 diffusion-schedule buffers. It is opened with
  ``torch.load(mmap=True)``, so only the tensors that are used are read; every name and shape is checked first,
  and any missing, unexpected or misshapen tensor is named (:class:`~.keymap.CheckpointLayoutError`);
- a hub repository holding such a file (default ``MVDream/MVDream`` + ``sd-v2.1-base-4view.pt``), downloaded with
  ``huggingface_hub`` on first use;
- a diffusers-format folder or hub repository (``checkpoint_file: null``): ``unet/`` (``UNet2DConditionModel`` with
  the camera as a ``projection`` class embedding, written by :func:`save_mvdream_diffusers` or
  ``python -m threestudio.models.diffusion.mvdream.convert``; a ``MultiViewUNetModel`` folder in ldm naming, such as
  ashawkey/mvdream-sd2.1-diffusers, is mapped too), ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``.

Missing or unreadable weights raise :class:`~threestudio.utils.weights.PretrainedWeightsError` (which model, where
it looked, how to get it) before training starts. Architectures are read from tensor shapes (the file stores no
config); heads follow MVDream's 64 channels per head.

:func:`random_mvdream_models` and :func:`save_random_mvdream_checkpoint` build random-weight models (``tiny`` for
CPU tests, ``full`` = the real sizes) and write them in the checkpoint's exact layout, so tests and benchmarks go
through the same loading path as a real run, without downloading anything.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from threestudio.models.diffusion.mvdream import DEFAULT_FILE, DEFAULT_REPO  # noqa: F401
from threestudio.models.diffusion.mvdream.keymap import (
    SCHEDULE_BUFFERS,
    CheckpointLayoutError,
    KeyMap,
    check_shapes,
    infer_text_config,
    infer_unet_config,
    infer_vae_config,
    ldm_schedule_buffers,
    text_keymap,
    text_unused_shapes,
    unet_keymap,
    vae_keymap,
)
from threestudio.models.diffusion.mvdream.unet import MVDREAM_SD21_UNET, MultiViewUNet, diffusers_unet_config

PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model.model."}
COMPONENTS = ("unet", "vae", "text_encoder")
CHECKPOINT_SUFFIXES = (".pt", ".ckpt", ".pth", ".safetensors", ".bin")
# where the CLIP tokenizer comes from when the source is a checkpoint file (SD-2.1-base's BPE is OpenCLIP's)
DEFAULT_TOKENIZER = "stabilityai/stable-diffusion-2-1-base"
WHAT = "MVDream"


# ------------------------------------------------------------------------------------------------------ errors
def _weights_error(key: str, message: str, suggestion: str = "") -> Exception:
    from threestudio.utils.weights import PretrainedWeightsError

    return PretrainedWeightsError(key, message, suggestion)


def how_to_get(key: str, checkpoint_file: Optional[str] = DEFAULT_FILE) -> str:
    f = checkpoint_file or DEFAULT_FILE
    return (f"download it on a machine with internet access with `huggingface-cli download {DEFAULT_REPO} {f} "
            f"--local-dir /path/to/mvdream` and set {key}=/path/to/mvdream/{f}; or let a run with internet access "
            f"download it ({key}={DEFAULT_REPO}, checkpoint_file: {f}); a diffusers-format folder also works "
            f"(checkpoint_file: null)")


# ------------------------------------------------------------------------------------------------------ sources
def _looks_like_file(name: str) -> bool:
    return name.lower().endswith(CHECKPOINT_SUFFIXES)


def resolve_source(name_or_path: str, checkpoint_file: Optional[str], key: str,
                   download: bool = True) -> Tuple[str, str]:
    """("checkpoint", local file) or ("folder", local folder or hub id).

    A hub id with ``checkpoint_file`` is downloaded here when ``download`` (else only the cache is consulted and
    ("checkpoint", "") means "will be downloaded")."""
    from threestudio.utils.weights import _where, hf_offline, is_local_path

    if not name_or_path:
        raise _weights_error(key, f"no {WHAT} model given", how_to_get(key, checkpoint_file))
    p = os.path.abspath(os.path.expanduser(name_or_path))
    if os.path.isfile(p):
        return "checkpoint", p
    if os.path.isdir(p):
        has_folder_layout = os.path.isdir(os.path.join(p, "unet")) or os.path.isfile(
            os.path.join(p, "model_index.json"))
        if checkpoint_file and not has_folder_layout:
            f = os.path.join(p, checkpoint_file)
            if not os.path.isfile(f):
                raise _weights_error(
                    key, f"{WHAT} weights not found: looked for the checkpoint {f} (and for a diffusers folder with "
                    f"unet/ in {p}); neither exists", how_to_get(key, checkpoint_file))
            return "checkpoint", f
        return "folder", p
    if _looks_like_file(name_or_path) or is_local_path(name_or_path):
        raise _weights_error(key, f"{WHAT} weights not found: looked in {_where(name_or_path)}, which does not exist",
                             how_to_get(key, checkpoint_file))
    if not checkpoint_file:
        return "folder", name_or_path
    # a hub repository holding the checkpoint file
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError as e:  # pragma: no cover
        raise _weights_error(key, f"{WHAT} '{name_or_path}' is a hub id but huggingface_hub is missing ({e})",
                             how_to_get(key, checkpoint_file)) from e
    cached = try_to_load_from_cache(name_or_path, checkpoint_file)
    if isinstance(cached, str) and os.path.isfile(cached):
        return "checkpoint", cached
    if hf_offline():
        raise _weights_error(key, f"{WHAT} '{name_or_path}' ({checkpoint_file}) is not in the Hugging Face cache and "
                             f"HF_HUB_OFFLINE is set: looked in {_where(name_or_path)}",
                             how_to_get(key, checkpoint_file))
    if not download:
        return "checkpoint", ""
    try:
        return "checkpoint", hf_hub_download(name_or_path, checkpoint_file)
    except Exception as e:  # noqa: BLE001
        raise _weights_error(key, f"{WHAT} '{name_or_path}' ({checkpoint_file}): the download failed "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Looked in "
                             f"{_where(name_or_path)}", how_to_get(key, checkpoint_file)) from e


def read_checkpoint(path: str, key: str = "") -> Dict[str, torch.Tensor]:
    """A flat {name: tensor} dict, memory-mapped where the format allows (nothing is read until used)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            try:
                sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
                if "mmap" not in str(e) and "zip" not in str(e).lower():
                    raise
                sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise _weights_error(key, f"cannot read the {WHAT} checkpoint {path} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})",
                             f"check that the file is complete (a {DEFAULT_FILE} is 5.2 GB in fp32), or "
                             + how_to_get(key)) from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise _weights_error(key, f"the {WHAT} checkpoint {path} holds a {type(sd).__name__}, not a dict of tensors",
                             how_to_get(key))
    return sd


# ------------------------------------------------------------------------------------------------------ layout
def _empty_model(ctor: Any) -> Any:
    """Build a model with parameters on the meta device (no memory, no init), buffers real."""
    try:
        from accelerate import init_empty_weights
    except ImportError:  # pragma: no cover
        return ctor()
    with init_empty_weights():
        return ctor()


def _shapes(model: torch.nn.Module) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _text_root(model: torch.nn.Module) -> str:
    return "text_model." if any(k.startswith("text_model.") for k in model.state_dict()) else ""


def build_unet(ldm: Mapping[str, Any], num_frames: int = 4, empty: bool = True) -> MultiViewUNet:
    from diffusers import UNet2DConditionModel

    cfg = diffusers_unet_config(dict(ldm))
    unet = _empty_model(lambda: UNet2DConditionModel(**cfg)) if empty else UNet2DConditionModel(**cfg)
    return MultiViewUNet(unet, num_frames=num_frames)


def build_vae(cfg: Mapping[str, Any], empty: bool = True) -> Any:
    from diffusers import AutoencoderKL

    return _empty_model(lambda: AutoencoderKL(**cfg)) if empty else AutoencoderKL(**cfg)


def build_text_encoder(cfg: Mapping[str, Any], empty: bool = True) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    conf = CLIPTextConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    return _empty_model(lambda: CLIPTextModel(conf)) if empty else CLIPTextModel(conf)


@dataclass
class CheckpointLayout:
    """What a checkpoint holds: the architectures read from it, per-component tensors and key maps, the models'
    expected shapes, and every problem found (missing / unexpected / misshapen tensors)."""

    unet_config: Dict[str, Any]
    vae_config: Dict[str, Any]
    text_config: Dict[str, Any]
    parts: Dict[str, Dict[str, torch.Tensor]]
    keymaps: Dict[str, KeyMap]
    models: Dict[str, Any]  # empty (meta) models
    problems: List[str] = field(default_factory=list)
    schedule: Dict[str, torch.Tensor] = field(default_factory=dict)


def split_checkpoint(sd: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, Dict[str, torch.Tensor]], Dict[str, Any],
                                                                List[str]]:
    parts: Dict[str, Dict[str, torch.Tensor]] = {c: {} for c in COMPONENTS}
    schedule: Dict[str, Any] = {}
    extra: List[str] = []
    for k, v in sd.items():
        for comp, prefix in PREFIXES.items():
            if k.startswith(prefix):
                parts[comp][k[len(prefix):]] = v
                break
        else:
            if k in SCHEDULE_BUFFERS:
                schedule[k] = v
            else:
                shape = list(v.shape) if torch.is_tensor(v) else type(v).__name__
                extra.append(f"unexpected tensor '{k}' ({shape}): not part of the UNet (model.diffusion_model.*), "
                             f"the autoencoder (first_stage_model.*), the text tower (cond_stage_model.model.*) or "
                             f"the diffusion schedule buffers")
    return parts, schedule, extra


def inspect_checkpoint(sd: Mapping[str, torch.Tensor], num_head_channels: int = 64, num_frames: int = 4,
                       where: str = "the MVDream checkpoint", raise_on_problems: bool = True) -> CheckpointLayout:
    """Check every tensor name and shape of an MVDream checkpoint (works on meta tensors: nothing is read).

    Raises :class:`CheckpointLayoutError` listing all problems (unless ``raise_on_problems`` is False)."""
    parts, schedule, problems = split_checkpoint(sd)
    for comp, prefix in PREFIXES.items():
        if not parts[comp]:
            problems.append(f"no tensors named '{prefix}*' ({comp}): is this an MVDream sd-v2.1-base-4view "
                            f"checkpoint? (sd-v1.5-4view, with an OpenAI CLIP text encoder, is not supported)")
    if any(not parts[c] for c in COMPONENTS):
        raise CheckpointLayoutError(problems, where)
    unet_cfg = infer_unet_config(parts["unet"], num_head_channels=num_head_channels)
    vae_cfg = infer_vae_config(parts["vae"])
    text_cfg = infer_text_config(parts["text_encoder"])
    models = {"unet": build_unet(unet_cfg, num_frames=num_frames), "vae": build_vae(vae_cfg),
              "text_encoder": build_text_encoder(text_cfg)}
    n_blocks = int(text_cfg["_n_blocks"])
    tkm = text_keymap(n_blocks, _text_root(models["text_encoder"]))
    tkm.unused = dict(text_unused_shapes(n_blocks, text_cfg["hidden_size"], text_cfg["intermediate_size"],
                                         text_cfg["projection_dim"]))
    keymaps = {"unet": unet_keymap(unet_cfg),
               "vae": vae_keymap(len(vae_cfg["block_out_channels"]), vae_cfg["layers_per_block"]),
               "text_encoder": tkm}
    for comp in COMPONENTS:
        model = models[comp].unet if comp == "unet" else models[comp]
        problems += check_shapes(keymaps[comp], parts[comp], _shapes(model), PREFIXES[comp])
    n_t = None
    for name in SCHEDULE_BUFFERS:
        if name not in schedule:
            problems.append(f"missing tensor '{name}' (a diffusion schedule buffer, shape [1000])")
            continue
        t = schedule[name]
        if t.dim() != 1 or (n_t is not None and t.shape[0] != n_t):
            problems.append(f"tensor '{name}' has shape {list(t.shape)}, expected [{n_t or 1000}] like the other "
                            f"schedule buffers")
        n_t = n_t or int(t.shape[0])
    layout = CheckpointLayout(unet_cfg, vae_cfg, text_cfg, parts, keymaps, models, problems, schedule)
    if problems and raise_on_problems:
        raise CheckpointLayoutError(problems, where)
    return layout


def load_component(layout: CheckpointLayout, comp: str, dtype: Optional[torch.dtype] = None,
                   device: Any = None) -> Any:
    """The model of one component with the checkpoint's tensors (strict: every parameter is set)."""
    model = layout.models[comp]
    target = model.unet if comp == "unet" else model
    converted = layout.keymaps[comp].convert(layout.parts[comp])
    target.load_state_dict(converted, strict=True, assign=True)
    model.requires_grad_(False).eval()
    return cast(model, dtype=dtype, device=device)


def cast(model: Any, dtype: Optional[torch.dtype] = None, device: Any = None) -> Any:
    """``nn.Module.to`` (diffusers' override warns about fp32-pinned modules that these models do not have)."""
    if dtype is None and device is None:
        return model
    return torch.nn.Module.to(model, device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------------ loading
@dataclass
class MVDreamModels:
    unet: Optional[MultiViewUNet] = None
    vae: Optional[Any] = None
    text_encoder: Optional[Any] = None
    alphas_cumprod: Optional[torch.Tensor] = None  # [T] float32
    source: str = ""
    kind: str = ""  # checkpoint | folder


def preflight(name_or_path: str, checkpoint_file: Optional[str], key: str, components: Sequence[str] = COMPONENTS,
              num_head_channels: int = 64) -> None:
    """Start-up check, no weights read: the file exists and every tensor name and shape is right (a memory-mapped
    read of the checkpoint's index), or the folder has the components."""
    kind, where = resolve_source(name_or_path, checkpoint_file, key, download=False)
    if kind == "checkpoint":
        if where:
            sd = read_checkpoint(where, key)
            try:
                inspect_checkpoint(sd, num_head_channels=num_head_channels, where=where)
            except CheckpointLayoutError as e:
                raise _weights_error(key, f"the {WHAT} checkpoint does not have the expected tensors: {e}",
                                     "use the original sd-v2.1-base-4view.pt; " + how_to_get(key, checkpoint_file))
        return
    from threestudio.utils.weights import check_pretrained

    subs = [c for c in components if c != "alphas"]
    check_pretrained(name_or_path, subs, key, WHAT)


def _component_file(name: str, sub: str, filename: str) -> Optional[str]:
    p = os.path.join(os.path.abspath(os.path.expanduser(name)), sub, filename)
    if os.path.isdir(os.path.dirname(os.path.dirname(p))):
        return p if os.path.isfile(p) else None
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(name, f"{sub}/{filename}")
    except Exception:  # noqa: BLE001
        return None


def _load_folder_unet(name: str, key: str, dtype: torch.dtype, num_frames: int, num_head_channels: int) -> Any:
    from diffusers import UNet2DConditionModel

    from threestudio.utils.weights import load_pretrained

    cfg_path = _component_file(name, "unet", "config.json")
    cfg = json.load(open(cfg_path)) if cfg_path else {}
    if "model_channels" in cfg:  # MVDream's own MultiViewUNetModel saved in a diffusers folder (ldm naming)
        ldm = {k: v for k, v in cfg.items() if not k.startswith("_")}
        ldm.setdefault("num_head_channels", num_head_channels)
        weights = None
        for f in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            weights = _component_file(name, "unet", f)
            if weights:
                break
        if not weights:
            raise _weights_error(key, f"{WHAT} unet/ of '{name}' has a MultiViewUNetModel config but no weights file",
                                 how_to_get(key, None))
        sd = read_checkpoint(weights, key)
        model = build_unet(ldm, num_frames=num_frames)
        km = unet_keymap(ldm)
        problems = check_shapes(km, sd, _shapes(model.unet), "unet/")
        if problems:
            raise _weights_error(key, str(CheckpointLayoutError(problems, weights)), how_to_get(key, None))
        model.unet.load_state_dict(km.convert(sd), strict=True, assign=True)
        return cast(model, dtype=dtype)
    unet = load_pretrained(UNet2DConditionModel, name, "unet", key, WHAT, torch_dtype=dtype)
    try:
        return MultiViewUNet(unet, num_frames=num_frames)
    except ValueError as e:
        raise _weights_error(key, f"{WHAT} unet/ of '{name}': {e}", how_to_get(key, None)) from e


def load_mvdream(name_or_path: str, components: Sequence[str] = ("unet", "vae", "alphas"),
                 checkpoint_file: Optional[str] = DEFAULT_FILE, key: str = "pretrained_model_name_or_path",
                 dtype: torch.dtype = torch.float32, device: Any = "cpu", num_frames: int = 4,
                 num_head_channels: int = 64) -> MVDreamModels:
    """Load the requested components (``unet``, ``vae``, ``text_encoder``, ``alphas``) frozen, in ``dtype`` on
    ``device``. Every failure is a :class:`PretrainedWeightsError` naming the model, where it looked and what to do."""
    kind, where = resolve_source(name_or_path, checkpoint_file, key)
    out = MVDreamModels(source=where, kind=kind)
    if kind == "checkpoint":
        sd = read_checkpoint(where, key)
        try:
            layout = inspect_checkpoint(sd, num_head_channels=num_head_channels, num_frames=num_frames, where=where)
        except CheckpointLayoutError as e:
            raise _weights_error(key, f"the {WHAT} checkpoint does not have the expected tensors: {e}",
                                 "use the original sd-v2.1-base-4view.pt; " + how_to_get(key, checkpoint_file)) from e
        for comp in ("unet", "vae", "text_encoder"):
            if comp in components:
                setattr(out, comp, load_component(layout, comp, dtype=dtype, device=device))
        if "alphas" in components:
            out.alphas_cumprod = layout.schedule["alphas_cumprod"].float().clone().to(device)
        del sd, layout
        return out
    from threestudio.utils.weights import check_pretrained, load_pretrained

    check_pretrained(name_or_path, [c for c in components if c in COMPONENTS], key, WHAT)
    if "unet" in components:
        out.unet = _load_folder_unet(name_or_path, key, dtype, num_frames, num_head_channels)
    if "vae" in components:
        from diffusers import AutoencoderKL

        out.vae = load_pretrained(AutoencoderKL, name_or_path, "vae", key, WHAT, torch_dtype=dtype)
    if "text_encoder" in components:
        from transformers import CLIPTextModel

        out.text_encoder = load_pretrained(CLIPTextModel, name_or_path, "text_encoder", key, WHAT,
                                           torch_dtype=dtype)
    if "alphas" in components:
        if _component_file(name_or_path, "scheduler", "scheduler_config.json"):
            from diffusers import DDPMScheduler

            sched = load_pretrained(DDPMScheduler, name_or_path, "scheduler", key, WHAT)
            out.alphas_cumprod = sched.alphas_cumprod.float().clone()
        else:  # MVDream's schedule (linear_start 0.00085, linear_end 0.012, 1000 steps)
            out.alphas_cumprod = ldm_schedule_buffers()["alphas_cumprod"]
        out.alphas_cumprod = out.alphas_cumprod.to(device)
    for m in (out.unet, out.vae, out.text_encoder):
        if m is not None:
            cast(m.requires_grad_(False).eval(), device=device)
    return out


# ------------------------------------------------------------------------------------------------ random models
# (unet ldm kwargs, diffusers AutoencoderKL kwargs, CLIPTextConfig kwargs with _n_blocks = checkpoint blocks)
PRESETS: Dict[str, Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]] = {
    "full": (
        dict(MVDREAM_SD21_UNET),
        dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
             layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, act_fn="silu", sample_size=256,
             scaling_factor=0.18215),
        dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
             max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=1024,
             bos_token_id=49406, eos_token_id=49407, pad_token_id=0, _n_blocks=24),
    ),
    # 64 channels per head everywhere (as the loader assumes); vocab of the byte-level toy tokenizer (514)
    "tiny": (
        dict(image_size=8, in_channels=4, out_channels=4, model_channels=64, attention_resolutions=[1],
             num_res_blocks=1, channel_mult=[1, 2], num_head_channels=64, use_spatial_transformer=True,
             use_linear_in_transformer=True, transformer_depth=1, context_dim=64, use_checkpoint=False,
             legacy=False, camera_dim=16),
        dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 64, 64),
             layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, act_fn="silu", sample_size=64,
             scaling_factor=0.18215),
        dict(vocab_size=514, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
             max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=64,
             bos_token_id=512, eos_token_id=513, pad_token_id=0, _n_blocks=3),
    ),
}


def random_mvdream_models(preset: str = "tiny", seed: int = 0, components: Sequence[str] = COMPONENTS,
                          num_frames: int = 4, device: Any = "cpu") -> MVDreamModels:
    """Random-weight models of a preset (``tiny`` or ``full``) with non-trivial values everywhere, built (and
    initialised) on ``device`` (a GPU builds the full-size models in a second)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown MVDream preset {preset!r}; choose one of {', '.join(PRESETS)}")
    with torch.device(device):
        return _random_models(preset, seed, components, num_frames)


def _random_models(preset: str, seed: int, components: Sequence[str], num_frames: int) -> MVDreamModels:
    unet_cfg, vae_cfg, text_cfg = PRESETS[preset]
    torch.manual_seed(seed)
    out = MVDreamModels(source=f"random:{preset}", kind="random")
    if "unet" in components:
        out.unet = build_unet(unet_cfg, num_frames=num_frames, empty=False).eval()
        with torch.no_grad():  # diffusers zero-initialises nothing, but make sure no tensor is trivially zero
            for name, p in out.unet.named_parameters():
                if not p.any():
                    p.uniform_(-0.05, 0.05)
    if "vae" in components:
        out.vae = build_vae(vae_cfg, empty=False).eval()
    if "text_encoder" in components:
        out.text_encoder = build_text_encoder(text_cfg, empty=False).eval()
    out.alphas_cumprod = ldm_schedule_buffers()["alphas_cumprod"]
    for m in (out.unet, out.vae, out.text_encoder):
        if m is not None:
            m.requires_grad_(False)
    return out


def mvdream_checkpoint_state_dict(models: MVDreamModels, n_text_blocks: Optional[int] = None,
                                  seed: int = 0) -> Dict[str, torch.Tensor]:
    """Models -> one flat dict in ``sd-v2.1-base-4view.pt``'s naming (the unused last text block, text_projection and
    logit_scale are filled with random values; the 12 schedule buffers are MVDream's)."""
    if models.unet is None or models.vae is None or models.text_encoder is None:
        raise ValueError("a checkpoint needs the unet, vae and text_encoder")
    g = torch.Generator().manual_seed(seed)
    ldm_unet = unet_keymap(_ldm_config_of(models.unet))
    sd: Dict[str, torch.Tensor] = {}
    for k, v in ldm_unet.invert(models.unet.unet.state_dict()).items():
        sd[PREFIXES["unet"] + k] = v.contiguous()
    vcfg = models.vae.config
    for k, v in vae_keymap(len(vcfg.block_out_channels), vcfg.layers_per_block).invert(
            models.vae.state_dict()).items():
        sd[PREFIXES["vae"] + k] = v.contiguous()
    tcfg = models.text_encoder.config
    n_blocks = n_text_blocks or tcfg.num_hidden_layers + 1
    tkm = text_keymap(n_blocks, _text_root(models.text_encoder))
    text_sd = {k: v for k, v in models.text_encoder.state_dict().items() if not k.endswith("position_ids")}
    for k, v in tkm.invert(text_sd).items():
        sd[PREFIXES["text_encoder"] + k] = v.contiguous()
    for k, shape in text_unused_shapes(n_blocks, tcfg.hidden_size, tcfg.intermediate_size,
                                       tcfg.projection_dim).items():
        sd[PREFIXES["text_encoder"] + k] = (torch.randn(shape, generator=g) * 0.02 if shape else
                                            torch.tensor(4.6052))
    sd.update(ldm_schedule_buffers())
    return sd


def _ldm_config_of(unet: MultiViewUNet) -> Dict[str, Any]:
    """MultiViewUNetModel arguments of one of our UNets (for naming)."""
    c = unet.unet.config
    mc = c.block_out_channels[0]
    heads = c.attention_head_dim if isinstance(c.attention_head_dim, (list, tuple)) else [c.attention_head_dim] * len(
        c.block_out_channels)
    attn = [2**i for i, t in enumerate(c.down_block_types) if t.startswith("CrossAttn")]
    lvl = next(i for i, t in enumerate(c.down_block_types) if t.startswith("CrossAttn"))
    return dict(in_channels=c.in_channels, out_channels=c.out_channels, model_channels=mc,
                attention_resolutions=attn, num_res_blocks=c.layers_per_block,
                channel_mult=[ch // mc for ch in c.block_out_channels],
                num_head_channels=c.block_out_channels[lvl] // heads[lvl], context_dim=c.cross_attention_dim,
                use_linear_in_transformer=c.use_linear_projection, camera_dim=unet.camera_dim)


def save_random_mvdream_checkpoint(path: str, preset: str = "tiny", seed: int = 0,
                                   dtype: Optional[torch.dtype] = None) -> MVDreamModels:
    """Write a random-weight checkpoint in ``sd-v2.1-base-4view.pt``'s exact layout; returns the models."""
    models = random_mvdream_models(preset, seed)
    sd = mvdream_checkpoint_state_dict(models, seed=seed)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(sd, path)
    return models


def save_mvdream_diffusers(folder: str, models: MVDreamModels, tokenizer: Any = None) -> str:
    """Write models as a diffusers-format MVDream folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/)."""
    from diffusers import DDPMScheduler

    os.makedirs(folder, exist_ok=True)
    if models.unet is not None:
        models.unet.unet.save_pretrained(os.path.join(folder, "unet"))
    if models.vae is not None:
        models.vae.save_pretrained(os.path.join(folder, "vae"))
    if models.text_encoder is not None:
        models.text_encoder.save_pretrained(os.path.join(folder, "text_encoder"))
    if tokenizer is not None:
        tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
    DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False, prediction_type="epsilon").save_pretrained(os.path.join(folder, "scheduler"))
    index = {"_class_name": "MVDreamPipeline", "_diffusers_version": "0.42.1",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDPMScheduler"], "num_frames": 4, "camera": "projection class embedding"}
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    return folder
