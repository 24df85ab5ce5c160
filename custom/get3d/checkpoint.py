"""Official GET3D checkpoints (``torch.save({'G': ..., 'G_ema': ..., 'D': ...})``) and our own generator files.

Loading is ``torch.load(weights_only=True)`` (state dicts of tensors only; nothing is unpickled). Every tensor is
checked against the expected layout before anything is copied: a missing, unexpected or misshapen tensor raises
:class:`CheckpointError` naming the tensor (all problems at once, up to a limit).

Expected layouts:

* ``G`` / ``G_ema``: the state dict of our :class:`~.generator.GET3DGenerator` built with the official flags. Our
  module tree uses the official names, so the name map (:func:`official_to_ours`) is the identity on every
  generator tensor; the grid is not in the checkpoint (rebuilt from ``tet_res``, as GET3D).
* ``D``: the two camera-conditioned StyleGAN2 discriminators (RGB and mask), computed by
  :func:`discriminator_shapes`. NADA does not use D; it is validated and kept so that an adapted generator can be
  written back in the official layout (``G``, ``G_ema``, ``D``), which GET3D's own inference loads strictly.

The tests hold both layouts against ``state_dict_shapes.json`` (the official model's names and shapes).

Our own generator file (:func:`save_generator` / :func:`load_generator`): ``{"format": "threestudio-get3d/1",
"config": <generator config>, "G_ema": state_dict, "G": state_dict[, "D": ...]}``, written atomically; it is also a
valid official checkpoint (same keys and names).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple  # noqa: F401

import torch

FORMAT = "threestudio-get3d/1"
GENERATOR_KEYS = ("G", "G_ema")


class CheckpointError(ValueError):
    pass


def official_to_ours(name: str) -> str:
    """Official tensor name -> our parameter name (identical by construction of our module tree)."""
    return name


def discriminator_shapes(img_resolution: int = 1024, channel_base: int = 32768, channel_max: int = 512,
                         cond_dim: int = 14, cmap_dim: int = 512, mapping_layers: int = 8, mbstd_channels: int = 1
                         ) -> "OrderedDict[str, Tuple[int, ...]]":
    """Names and shapes of GET3D's ``D``: an RGB and a mask discriminator (prefix ``mask_``), each with blocks
    ``b<res>`` (fromrgb, conv0, conv1: "skip"-style input at every resolution), a camera-condition mapping network
    (``embed`` 14 -> 512, 8 FC layers) and the ``b4`` epilogue (minibatch-std conv, fc, out)."""
    import math

    out: "OrderedDict[str, Tuple[int, ...]]" = OrderedDict()
    log2 = int(round(math.log2(img_resolution)))
    res_list = [2 ** i for i in range(log2, 2, -1)]
    ch = {r: min(channel_base // r, channel_max) for r in res_list + [4]}
    for prefix, img_ch in (("", 3), ("mask_", 1)):
        for r in res_list:
            cin, cout = ch[r], ch[r // 2]
            b = f"{prefix}b{r}"
            out[f"{b}.resample_filter"] = (4, 4)
            out[f"{b}.fromrgb.weight"] = (cin, img_ch, 1, 1)
            out[f"{b}.fromrgb.bias"] = (cin,)
            out[f"{b}.fromrgb.resample_filter"] = (4, 4)
            out[f"{b}.conv0.weight"] = (cin, cin, 3, 3)
            out[f"{b}.conv0.bias"] = (cin,)
            out[f"{b}.conv0.resample_filter"] = (4, 4)
            out[f"{b}.conv1.weight"] = (cout, cin, 3, 3)
            out[f"{b}.conv1.bias"] = (cout,)
            out[f"{b}.conv1.resample_filter"] = (4, 4)
        m = f"{prefix}mapping"
        out[f"{m}.embed.weight"] = (cmap_dim, cond_dim)
        out[f"{m}.embed.bias"] = (cmap_dim,)
        for i in range(mapping_layers):
            out[f"{m}.fc{i}.weight"] = (cmap_dim, cmap_dim)
            out[f"{m}.fc{i}.bias"] = (cmap_dim,)
        c4 = ch[4]
        b = f"{prefix}b4"
        out[f"{b}.fromrgb.weight"] = (c4, img_ch, 1, 1)
        out[f"{b}.fromrgb.bias"] = (c4,)
        out[f"{b}.fromrgb.resample_filter"] = (4, 4)
        out[f"{b}.conv.weight"] = (c4, c4 + mbstd_channels, 3, 3)
        out[f"{b}.conv.bias"] = (c4,)
        out[f"{b}.conv.resample_filter"] = (4, 4)
        out[f"{b}.fc.weight"] = (c4, c4 * 16)
        out[f"{b}.fc.bias"] = (c4,)
        out[f"{b}.out.weight"] = (cmap_dim, c4)
        out[f"{b}.out.bias"] = (cmap_dim,)
    return out


def module_shapes(module: torch.nn.Module) -> "OrderedDict[str, Tuple[int, ...]]":
    """Persistent state (parameters and buffers) of ``module`` as name -> shape."""
    return OrderedDict((k, tuple(v.shape)) for k, v in module.state_dict().items())


def check_state_dict(sd: Mapping[str, Any], expected: Mapping[str, Iterable[int]], what: str,
                     limit: int = 20) -> None:
    """Raise :class:`CheckpointError` naming every missing, unexpected, misshapen or non-tensor entry."""
    problems: List[str] = []
    for k, shape in expected.items():
        if k not in sd:
            problems.append(f"missing tensor '{k}' (expected shape {list(shape)})")
        elif not torch.is_tensor(sd[k]):
            problems.append(f"'{k}' is a {type(sd[k]).__name__}, not a tensor")
        elif tuple(sd[k].shape) != tuple(shape):
            problems.append(f"misshapen tensor '{k}': {list(sd[k].shape)} in the file, expected {list(shape)}")
    for k in sd:
        if k not in expected:
            problems.append(f"unexpected tensor '{k}' (shape {list(getattr(sd[k], 'shape', []))})")
    if problems:
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        raise CheckpointError(
            f"{what} does not match the expected layout ({len(problems)} problem(s)):\n  "
            + "\n  ".join(problems[:limit]) + more
            + "\nCheck that the generator config (tri_plane_resolution, iso_surface, feat_channel, "
              "mlp_latent_channel, n_implicit_layer, channel_base/max, z_dim/w_dim) matches the checkpoint.")


def read_checkpoint(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"GET3D checkpoint not found: {path}. Download an official checkpoint (e.g. "
                              f"shapenet_car.pt from the GET3D README) and set system.checkpoint to its path.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"could not read {path} with torch.load(weights_only=True): {e}. It must be a "
                              f"dict of state dicts ('G', 'G_ema', 'D') of tensors.") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict with keys 'G', 'G_ema', 'D', got {type(ckpt).__name__}")
    return ckpt


def load_official(path: str, generator: torch.nn.Module, key: str = "G_ema", check_all: bool = True,
                  discriminator: Optional[Mapping[str, Iterable[int]]] = None) -> Dict[str, Any]:
    """Validate ``path`` and load its ``key`` state dict (``G_ema`` by default) into ``generator``.

    ``check_all``: also validate the other generator copy and ``D`` when present. Returns the checkpoint dict
    (validated state dicts) so that callers may keep ``D``.
    """
    ckpt = read_checkpoint(path)
    if key not in ckpt:
        alt = "; NADA checkpoints from studio-YAIVERSE store it as 'g_ema': rename the key" if "g_ema" in ckpt else ""
        raise CheckpointError(f"{path} has no '{key}' state dict (keys: {sorted(ckpt)}){alt}.")
    expected = module_shapes(generator)
    for k in ([key] + [g for g in GENERATOR_KEYS if g != key and g in ckpt]) if check_all else [key]:
        sd = {official_to_ours(n): t for n, t in ckpt[k].items()}
        check_state_dict(sd, expected, f"{path} ['{k}']")
        ckpt[k] = sd
    if check_all and "D" in ckpt:
        check_state_dict(ckpt["D"], discriminator or discriminator_shapes(), f"{path} ['D']")
    generator.load_state_dict(ckpt[key], strict=True)
    return ckpt


def save_generator(path: str, generator: torch.nn.Module, config: Optional[Mapping[str, Any]] = None,
                   extra: Optional[Mapping[str, Any]] = None) -> str:
    """Write ``generator`` as ``G`` and ``G_ema`` (+ ``extra`` entries such as ``D``) with its config; atomic."""
    import dataclasses

    from omegaconf import DictConfig, OmegaConf

    from threestudio.utils.saving import atomic_output

    cfg: Any = config if config is not None else getattr(generator, "cfg", {})
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    elif isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg = dict(cfg)
    sd = {k: v.detach().cpu().clone() for k, v in generator.state_dict().items()}
    payload = {"format": FORMAT, "config": cfg, "G": sd, "G_ema": sd}
    payload.update(dict(extra or {}))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_generator(path: str, **overrides: Any) -> torch.nn.Module:
    """Build a generator from the config stored by :func:`save_generator` and load its ``G_ema``."""
    from .generator import GET3DGenerator

    ckpt = read_checkpoint(path)
    if ckpt.get("format") != FORMAT or "config" not in ckpt:
        raise CheckpointError(f"{path} is not a threestudio GET3D generator file (no format '{FORMAT}'); "
                              f"official checkpoints load with load_official(path, generator).")
    cfg = dict(ckpt["config"])
    cfg.update(overrides)
    gen = GET3DGenerator(cfg)
    check_state_dict(ckpt["G_ema"], module_shapes(gen), f"{path} ['G_ema']")
    gen.load_state_dict(ckpt["G_ema"], strict=True)
    return gen
