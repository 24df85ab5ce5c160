"""Pretrained weights: find them, load them, and fail at start-up with a message that says how to fix it.

``pretrained_model_name_or_path`` (a config key of guidance modules and prompt processors) is either a Hugging Face
hub id (``stabilityai/stable-diffusion-2-1-base``: downloaded on first use into the HF cache) or a local folder in
diffusers layout (``unet/``, ``vae/``, ``scheduler/``, ``tokenizer/``, ``text_encoder/``). Every failure — a folder
that does not exist, a component missing from it, a hub id that is not cached while offline, a gated or unknown
repository, weights whose shapes do not fit the model — raises :class:`PretrainedWeightsError`, which names the
model and the config key, says where it looked (the folder, or the HF cache folder and the hub), and how to download
the weights or point the key at a folder.

:func:`check_pretrained` does the cheap part (no weights read) so a run can stop before any expensive work;
:func:`load_pretrained` wraps ``<cls>.from_pretrained`` with the same error handling.

:func:`save_random_stable_diffusion` writes a random-weight Stable Diffusion folder (tiny, or the UNet and VAE of
SD-2.1-base at full size) with ``save_pretrained``: tests and benchmarks load it through the same path a real run
uses, without downloading anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence

from threestudio.utils.config import ConfigError, ConfigIssue

# component subfolder -> files that must be there (any one of each group)
_CONFIG_FILES = {
    "unet": [("config.json",)],
    "vae": [("config.json",)],
    "text_encoder": [("config.json",)],
    "scheduler": [("scheduler_config.json",)],
    "tokenizer": [("tokenizer.json", "vocab.json", "tokenizer_config.json")],
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class PretrainedWeightsError(ConfigError):
    """Pretrained weights are missing, gated, unreachable or of the wrong shape. A :class:`ConfigError`, so
    ``launch.py`` prints the message without a traceback and exits with code 2."""

    def __init__(self, key: str, message: str, suggestion: str = "") -> None:
        super().__init__([ConfigIssue(key, message, "", suggestion)], header="Pretrained weights not available")
        self.key = key


def is_local_path(name_or_path: str) -> bool:
    """A local folder (existing, or written like a path) rather than a hub id."""
    p = os.path.expanduser(name_or_path)
    if os.path.exists(p):
        return True
    return (p.startswith(("/", "./", "../", "~")) or p.count("/") > 1 or "\\" in p or not _HUB_ID.match(p))


def hf_cache_folder(repo_id: str) -> str:
    """Where the HF hub cache keeps ``repo_id`` (``$HF_HUB_CACHE/models--org--name``)."""
    try:
        from huggingface_hub import constants

        root = constants.HF_HUB_CACHE
    except Exception:  # pragma: no cover
        root = os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")
    return os.path.join(root, "models--" + repo_id.replace("/", "--"))


def hf_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def how_to_get(name_or_path: str, key: str, hub_id: str = "stabilityai/stable-diffusion-2-1-base") -> str:
    """How to get the weights: download ``name_or_path`` (a hub id), or ``hub_id`` when a local folder was given."""
    repo = name_or_path if name_or_path and not is_local_path(name_or_path) else hub_id
    local = f"/path/to/{repo.split('/')[-1]}"
    return (f"download it with `huggingface-cli download {repo} --local-dir {local}` on a machine with internet "
            f"access (run `huggingface-cli login` first and accept the licence on https://huggingface.co/{repo} if "
            f"the repository is gated), then set {key}={local}; or let a run with internet access download '{repo}' "
            f"into the HF cache")


def _where(name_or_path: str) -> str:
    if is_local_path(name_or_path):
        return f"the local folder {os.path.abspath(os.path.expanduser(name_or_path))}"
    where = f"the Hugging Face cache ({hf_cache_folder(name_or_path)})"
    return where + (" only (HF_HUB_OFFLINE is set)" if hf_offline() else " and the Hugging Face Hub")


def _missing_files(folder: str, component: str) -> List[str]:
    sub = os.path.join(folder, component)
    if not os.path.isdir(sub):
        return [f"{component}/ (no such folder)"]
    names = os.listdir(sub)
    missing = [" or ".join(f"{component}/{f}" for f in group) for group in _CONFIG_FILES.get(component, [])
               if not any(f in names for f in group)]
    if component in ("unet", "vae", "text_encoder") and not any(n.endswith(_WEIGHT_SUFFIXES) for n in names):
        missing.append(f"{component}/*.safetensors (the weights)")
    return missing


def check_pretrained(name_or_path: str, components: Sequence[str], key: str, what: str,
                     hub_id: Optional[str] = None) -> None:
    """Cheap start-up check (no weights are read): the folder and its components exist, or a hub id is usable.

    Raises :class:`PretrainedWeightsError`. A hub id passes when it is in the HF cache, or when the hub may be
    reached (not offline); download errors then surface from :func:`load_pretrained`. ``hub_id``: the repository
    the message suggests downloading when a local folder is missing (default: Stable Diffusion 2.1 base).
    """
    def how(name: str) -> str:
        return how_to_get(name, key) if hub_id is None else how_to_get(name, key, hub_id)

    if not name_or_path:
        raise PretrainedWeightsError(key, f"no {what} model given", how(""))
    if is_local_path(name_or_path):
        folder = os.path.abspath(os.path.expanduser(name_or_path))
        if not os.path.isdir(folder):
            raise PretrainedWeightsError(
                key, f"{what} weights not found: looked in {_where(name_or_path)}, which does not exist",
                how(name_or_path))
        missing = [m for c in components for m in _missing_files(folder, c)]
        if missing:
            raise PretrainedWeightsError(
                key, f"{what} weights incomplete in {_where(name_or_path)}: missing {', '.join(missing)} "
                f"(expected a diffusers folder with {', '.join(c + '/' for c in components)})",
                how(name_or_path))
        return
    if hf_offline():
        cache = hf_cache_folder(name_or_path)
        snapshots = os.path.join(cache, "snapshots")
        have = os.path.isdir(snapshots) and any(
            all(not _missing_files(os.path.join(snapshots, s), c) for c in components) for s in os.listdir(snapshots))
        if not have:
            raise PretrainedWeightsError(
                key, f"{what} '{name_or_path}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set: looked in "
                f"{_where(name_or_path)}", how(name_or_path))


def _describe(e: BaseException) -> str:
    name = type(e).__name__
    text = str(e).strip().splitlines()
    first = text[0] if text else name
    if len(first) > 400:
        first = first[:400] + " ..."
    return f"{name}: {first}"


def load_pretrained(cls: Any, name_or_path: str, subfolder: Optional[str], key: str, what: str,
                    hub_id: Optional[str] = None, **kwargs: Any) -> Any:
    """``cls.from_pretrained(name_or_path, subfolder=..., **kwargs)`` with errors turned into
    :class:`PretrainedWeightsError` (missing, gated, unknown repository, offline, wrong shapes)."""
    part = f"{what} {subfolder}" if subfolder else what
    args = {"subfolder": subfolder} if subfolder else {}
    try:
        return cls.from_pretrained(name_or_path, **args, **kwargs)
    except Exception as e:  # noqa: BLE001 - every loading failure gets the same actionable message
        kind = type(e).__name__
        text = str(e)
        if "Gated" in kind or "gated" in text.lower():
            problem = (f"'{name_or_path}' is a gated repository: accept its licence on "
                       f"https://huggingface.co/{name_or_path} and log in with `huggingface-cli login`")
        elif "RepositoryNotFound" in kind or "Repository Not Found" in text:
            problem = f"no repository '{name_or_path}' on the Hugging Face Hub (or it is private)"
        elif "size mismatch" in text or "shape" in text.lower():
            problem = f"the weights in {subfolder or '.'}/ do not have the expected shapes ({_describe(e)})"
        elif isinstance(e, (OSError, EnvironmentError)) or "LocalEntryNotFound" in kind:
            problem = f"could not load it ({_describe(e)})"
        else:
            problem = f"loading failed ({_describe(e)})"
        raise PretrainedWeightsError(
            key, f"{part} weights for '{name_or_path}': {problem}. Looked in {_where(name_or_path)}",
            how_to_get(name_or_path, key) if hub_id is None else how_to_get(name_or_path, key, hub_id)) from e


def model_fingerprint(name_or_path: str, components: Sequence[str] = ("text_encoder", "tokenizer")) -> str:
    """A short identity of a model for cache keys: the name, plus (for a local folder or a cached hub snapshot) the
    size and modification time of the component files, so a replaced model gets new cache entries."""
    parts: List[str] = [name_or_path]
    folder = os.path.abspath(os.path.expanduser(name_or_path)) if is_local_path(name_or_path) else None
    if folder is None:
        snaps = os.path.join(hf_cache_folder(name_or_path), "refs", "main")
        if os.path.isfile(snaps):
            parts.append(open(snaps).read().strip())
    else:
        parts.append(folder)
        for c in components:
            sub = os.path.join(folder, c)
            if os.path.isdir(sub):
                for n in sorted(os.listdir(sub)):
                    st = os.stat(os.path.join(sub, n))
                    parts.append(f"{c}/{n}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- random models
def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2/CLIP byte-level BPE alphabet: every byte as a printable unicode character."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"),
                                                                                                  ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars)))


def save_toy_clip_tokenizer(folder: str) -> int:
    """A byte-level CLIP tokenizer without merges (one token per character), saved with ``save_pretrained``.
    Returns its vocabulary size (514). The ids differ from the real CLIP vocabulary; shapes and the API match."""
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[], model_max_length=77,
                        bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                        unk_token="<|endoftext|>")
    tok.save_pretrained(folder)
    return len(vocab)


SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32,
    flip_sin_to_cos=True, freq_shift=0, act_fn="silu", center_input_sample=False, upcast_attention=False)
SD21_BASE_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu", sample_size=512, scaling_factor=0.18215)
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8, use_linear_projection=True)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32, 32), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
    sample_size=64, scaling_factor=0.18215)
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def save_random_stable_diffusion(folder: str, preset: str = "tiny", seed: int = 0, dtype: Any = None,
                                 text_hidden_size: Optional[int] = None, text_layers: int = 2,
                                 device: Any = None) -> str:
    """Write a random-weight Stable Diffusion folder in diffusers layout (``model_index.json``, ``unet/``,
    ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) with ``save_pretrained``.

    ``preset``: ``tiny`` (a 0.8M-parameter UNet, hidden size 32: for CPU tests) or ``sd21-base`` (the UNet and VAE
    of SD-2.1-base at full size, built from their real configs; the text encoder stays small, hidden size 1024, as
    only its output shape matters to guidance). No download happens. ``device``: where the models are built
    (``"cuda"`` initialises the full-size UNet in seconds), ``dtype``: the dtype they are saved in.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if preset not in ("tiny", "sd21-base"):
        raise ValueError(f"unknown preset {preset!r} (tiny or sd21-base)")
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    unet_cfg, vae_cfg = (TINY_UNET, TINY_VAE) if preset == "tiny" else (SD21_BASE_UNET, SD21_BASE_VAE)
    hidden = text_hidden_size or unet_cfg["cross_attention_dim"]
    vocab_size = save_toy_clip_tokenizer(os.path.join(folder, "tokenizer"))
    text_cfg = CLIPTextConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=text_layers,
                              num_attention_heads=max(1, hidden // 64) if hidden >= 64 else 4,
                              vocab_size=vocab_size, max_position_embeddings=77, bos_token_id=vocab_size - 2,
                              eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, projection_dim=hidden)
    with torch.device(device or "cpu"):
        parts = {
            "unet": UNet2DConditionModel(**unet_cfg),
            "vae": AutoencoderKL(**vae_cfg),
            "text_encoder": CLIPTextModel(text_cfg),
        }
    for name, model in parts.items():
        if dtype is not None:
            model.to(dtype)
        model.save_pretrained(os.path.join(folder, name))
    DDIMScheduler(**SD_SCHEDULER).save_pretrained(os.path.join(folder, "scheduler"))
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    return folder


IP2P_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      steps_offset=1, prediction_type="epsilon")


def save_random_instruct_pix2pix(folder: str, seed: int = 0, text_hidden_size: int = 32, text_layers: int = 2) -> str:
    """Write a tiny random-weight InstructPix2Pix folder in the layout of ``timbrooks/instruct-pix2pix``
    (``model_index.json``, ``unet/`` with 8 input channels: 4 noisy latents + 4 image-conditioning latents,
    ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) with ``save_pretrained``, for tests: the guidance
    loads it through the same ``from_pretrained`` path as the real weights, without downloading anything. As in the
    real repository, ``scheduler/`` holds an ``EulerAncestralDiscreteScheduler`` config (the guidance reads it into a
    ``DDIMScheduler``, as Instruct-NeRF2NeRF does)."""
    import torch
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    vocab_size = save_toy_clip_tokenizer(os.path.join(folder, "tokenizer"))
    hidden = int(text_hidden_size)
    text_cfg = CLIPTextConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=text_layers,
                              num_attention_heads=4, vocab_size=vocab_size, max_position_embeddings=77,
                              bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                              projection_dim=hidden)
    unet_cfg = {**TINY_UNET, "in_channels": 8, "cross_attention_dim": hidden}
    parts = {"unet": UNet2DConditionModel(**unet_cfg), "vae": AutoencoderKL(**TINY_VAE),
             "text_encoder": CLIPTextModel(text_cfg)}
    with torch.no_grad():  # random conditioning weights: make the image channels matter as much as the noisy ones
        conv = parts["unet"].conv_in
        conv.weight[:, 4:] = torch.randn_like(conv.weight[:, 4:]) * conv.weight[:, :4].std()
    for name, model in parts.items():
        model.save_pretrained(os.path.join(folder, name))
    import warnings

    with warnings.catch_warnings():  # numpy 2's copy-keyword deprecation inside diffusers' Euler scheduler
        warnings.simplefilter("ignore", DeprecationWarning)
        EulerAncestralDiscreteScheduler(**IP2P_SCHEDULER).save_pretrained(os.path.join(folder, "scheduler"))
    index = {"_class_name": "StableDiffusionInstructPix2PixPipeline", "_diffusers_version": "0.42.1",
             "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
             "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    return folder
