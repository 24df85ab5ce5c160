"""Loading Zero-1-to-G's UNet from a hub id or a local folder, every tensor's name and shape checked first.

:func:`load_unet` reads ``<name_or_path>/<subfolder>/config.json`` and the names and shapes of the weights (no
tensor data: safetensors headers, or a memory-mapped ``.bin``), holds them against :func:`.layout.unet_layout` of
that config, and only then loads:

- a **base** SD-image-variations UNet (``UNet2DConditionModel``, 4 input channels, no class embedding, no joint
  attention; e.g. ``lambdalabs/sd-image-variations-diffusers``) is loaded with diffusers' ``from_pretrained`` and
  grown into :class:`~.unet.Zero1toGUNet`: ``conv_in`` keeps its 4 latent channels and gets 4 zeroed condition
  channels (the fork's ``zero_init_conv_in``), the class embedding is new (default init), ``attn_joint_mid`` is new
  with ``to_out`` zeroed: apart from the class-embedding term, the grown model starts as the base model on the
  noisy latent;
- a **Zero-1-to-G** UNet (saved by ``Zero1toGUNet.save_pretrained``, or the fork's ``UNetMV2DConditionModel``
  folder: same tensor names) is loaded with ``Zero1toGUNet.from_pretrained``.

A folder whose tensors do not match raises :class:`UNetLayoutError` naming the first differences and what to do.
``require_official=True`` also requires SD-image-variations' architecture (:data:`.layout.ARCHITECTURE_KEYS`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

import torch

from threestudio.utils.weights import PretrainedWeightsError, is_local_path

from .layout import (SD_IMAGE_VARIATIONS, Shape, architecture_differences, check_layout, layout_parameter_count,
                     unet_layout, zero1tog_unet_config)

KEY = "system.unet.pretrained_model_name_or_path"
WEIGHT_NAMES = ("diffusion_pytorch_model{v}.safetensors", "diffusion_pytorch_model{v}.safetensors.index.json",
                "diffusion_pytorch_model{v}.bin", "diffusion_pytorch_model{v}.bin.index.json")


class UNetLayoutError(PretrainedWeightsError):
    """A UNet checkpoint's tensors differ from the layout its config (and the official model) implies."""

    def __init__(self, where: str, problems: List[str], suggestion: str, key: str = KEY, limit: int = 12) -> None:
        self.problems = list(problems)
        shown = "\n    ".join(self.problems[:limit])
        more = f"\n    ... and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        super().__init__(key, f"the UNet weights in {where} do not match the Zero-1-to-G / SD-image-variations "
                         f"layout ({len(self.problems)} difference(s)):\n    {shown}{more}", suggestion)


def _fix(where: str) -> str:
    return (f"point {KEY} at the base model '{SD_IMAGE_VARIATIONS}' (or a local copy of it: fine-tuning starts "
            f"there), or at a folder written by Zero1toGUNet.save_pretrained / a training run of this system; a "
            f"checkpoint whose tensors differ from its own config.json ({where}) is damaged or made for another "
            f"architecture")


def _resolve(name_or_path: str, subfolder: Optional[str], filename: str) -> Optional[str]:
    """Local path of ``subfolder/filename`` in a folder or a hub repository (downloaded into the HF cache);
    None when it is not there."""
    if is_local_path(name_or_path):
        p = os.path.join(os.path.expanduser(name_or_path), subfolder or "", filename)
        return p if os.path.isfile(p) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError

    try:
        return hf_hub_download(name_or_path, filename, subfolder=subfolder or None)
    except EntryNotFoundError:
        return None


def _shapes_of_file(path: str) -> Dict[str, Shape]:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    return {k: tuple(v.shape) for k, v in sd.items()}


def read_unet_files(name_or_path: str, subfolder: Optional[str] = "unet", variant: Optional[str] = None,
                    key: str = KEY) -> Tuple[Dict[str, Any], Dict[str, Shape], str]:
    """``(config dict, {tensor name: shape}, where)`` of a diffusers UNet folder, without reading tensor data."""
    where = (os.path.abspath(os.path.join(os.path.expanduser(name_or_path), subfolder or ""))
             if is_local_path(name_or_path) else f"'{name_or_path}' ({subfolder or '.'}/ on the Hugging Face Hub)")
    try:
        cfg_file = _resolve(name_or_path, subfolder, "config.json")
    except Exception as e:  # noqa: BLE001 - hub errors: offline, unknown or gated repository
        raise PretrainedWeightsError(key, f"could not read the UNet config of {where}: {type(e).__name__}: {e}",
                                     _fix(where)) from e
    if cfg_file is None:
        raise PretrainedWeightsError(key, f"no UNet config.json in {where}", _fix(where))
    with open(cfg_file) as f:
        cfg = json.load(f)
    v = f".{variant}" if variant else ""
    for pattern in WEIGHT_NAMES:
        path = _resolve(name_or_path, subfolder, pattern.format(v=v))
        if path is None:
            continue
        if path.endswith(".index.json"):
            with open(path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            shapes: Dict[str, Shape] = {}
            for s in shards:
                sp = _resolve(name_or_path, subfolder, s)
                if sp is None:
                    raise PretrainedWeightsError(key, f"UNet weight shard {s} listed in {path} is missing", _fix(where))
                shapes.update(_shapes_of_file(sp))
            return cfg, shapes, where
        return cfg, _shapes_of_file(path), where
    raise PretrainedWeightsError(key, f"no UNet weights (diffusion_pytorch_model{v}.safetensors or .bin) in {where}",
                                 _fix(where))


def is_base_config(cfg: Dict[str, Any]) -> bool:
    """A plain SD(-image-variations) UNet config: 4 input channels, no class embedding, no joint modules."""
    return (int(cfg.get("in_channels", 4)) == int(cfg.get("out_channels", 4)) and cfg.get("class_embed_type") is None
            and not cfg.get("cd_attention_mid", False))


def expected_layout(cfg: Dict[str, Any]) -> Dict[str, Shape]:
    """The layout a folder's config implies (a Zero-1-to-G config without ``cd_attention_mid`` gets the default)."""
    if is_base_config(cfg):
        return unet_layout(cfg)
    return unet_layout({"cd_attention_mid": True, **cfg})


def check_unet_folder(name_or_path: str, subfolder: Optional[str] = "unet", variant: Optional[str] = None,
                      require_official: bool = False, key: str = KEY) -> Dict[str, Any]:
    """Check a UNet folder's tensor names and shapes against its layout (and, with ``require_official``, the
    architecture against SD-image-variations'); returns its config. Raises :class:`UNetLayoutError`."""
    cfg, shapes, where = read_unet_files(name_or_path, subfolder, variant, key)
    try:
        expected = expected_layout(cfg)
    except (KeyError, ValueError) as e:
        raise UNetLayoutError(where, [f"config.json does not describe an SD-style UNet: {e}"], _fix(where), key) from e
    problems = check_layout(shapes, expected)
    if require_official:
        problems = [f"config {d}" for d in architecture_differences(cfg)] + problems
    if problems:
        raise UNetLayoutError(where, problems, _fix(where), key)
    return cfg


def grow_base_unet(base: Any, **changes: Any) -> Any:
    """A :class:`~.unet.Zero1toGUNet` from a loaded base ``UNet2DConditionModel``: its config plus the fork's
    changes (``in_channels=8``, the 16-number class embedding, views/attributes) and ``changes``; base tensors
    copied, ``conv_in``'s extra input channels zero, new modules as :func:`~.unet.add_joint_attention` makes them."""
    from .layout import ZERO1TOG_CHANGES
    from .unet import Zero1toGUNet

    cfg = {k: v for k, v in base.config.items() if not k.startswith("_")}
    cfg.update(ZERO1TOG_CHANGES)
    cfg.update(changes)
    dtype = base.conv_in.weight.dtype
    model = Zero1toGUNet(**cfg).to(dtype)
    sd = model.state_dict()
    src = base.state_dict()
    w = src.pop("conv_in.weight")
    new_w = torch.zeros_like(sd["conv_in.weight"])
    new_w[:, : w.shape[1]] = w
    src["conv_in.weight"] = new_w
    missing, unexpected = model.load_state_dict(src, strict=False)
    allowed = ("class_embedding.", ".norm_joint_mid.", ".attn_joint_mid.")
    bad = [k for k in missing if not any(a in k or k.startswith(a) for a in allowed)] + list(unexpected)
    if bad:  # pragma: no cover - the layout check runs first
        raise RuntimeError(f"growing the base UNet left tensors unmatched: {bad[:8]}")
    return model


def load_unet(name_or_path: str = SD_IMAGE_VARIATIONS, subfolder: Optional[str] = "unet",
              torch_dtype: Optional[torch.dtype] = None, variant: Optional[str] = None, require_official: bool = False,
              key: str = KEY, **changes: Any) -> Any:
    """Zero-1-to-G's UNet from a hub id or a local diffusers folder (module docstring); ``changes`` are config
    overrides for a base model (e.g. ``sample_size``). Fails before loading with :class:`UNetLayoutError`."""
    from threestudio.utils.weights import load_pretrained

    from .unet import Zero1toGUNet

    cfg = check_unet_folder(name_or_path, subfolder, variant, require_official, key)
    kw: Dict[str, Any] = {}
    if torch_dtype is not None:
        kw["torch_dtype"] = torch_dtype
    if variant:
        kw["variant"] = variant
    if is_base_config(cfg):
        from diffusers import UNet2DConditionModel

        base = load_pretrained(UNet2DConditionModel, name_or_path, subfolder, key, "SD-image-variations UNet",
                               hub_id=SD_IMAGE_VARIATIONS, **kw)
        return grow_base_unet(base, **changes)
    if changes:
        raise ValueError(f"config changes {sorted(changes)} only apply when growing a base UNet; this folder is a "
                         "Zero-1-to-G UNet already")
    if "cd_attention_mid" not in cfg:
        kw["cd_attention_mid"] = True
    return load_pretrained(Zero1toGUNet, name_or_path, subfolder, key, "Zero-1-to-G UNet",
                           hub_id=SD_IMAGE_VARIATIONS, **kw)


def full_size_parameter_count(**overrides: Any) -> Dict[str, int]:
    """Parameters of the full-size model built on the ``meta`` device (no weights, no memory): the Zero-1-to-G UNet,
    the base SD-image-variations UNet, and what the fork adds; the layout's own count alongside as a cross-check."""
    from diffusers import UNet2DConditionModel

    from .layout import SD_IMAGE_VARIATIONS_UNET
    from .unet import Zero1toGUNet

    cfg = zero1tog_unet_config(**overrides)
    with torch.device("meta"):
        full = Zero1toGUNet(**cfg)
        base = UNet2DConditionModel(**SD_IMAGE_VARIATIONS_UNET)
    n_full = sum(p.numel() for p in full.parameters())
    n_base = sum(p.numel() for p in base.parameters())
    n_joint = sum(p.numel() for k, p in full.named_parameters() if "_joint_mid." in k)
    n_class = sum(p.numel() for k, p in full.named_parameters() if k.startswith("class_embedding."))
    return {"unet": n_full, "base_unet": n_base, "joint_attention": n_joint, "class_embedding": n_class,
            "conv_in_extra": n_full - n_base - n_joint - n_class, "layout": layout_parameter_count(unet_layout(cfg))}
