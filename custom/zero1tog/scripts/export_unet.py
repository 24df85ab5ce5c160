#!/usr/bin/env python
"""Write a trained zero1tog-system trial's UNet out as a Zero-1-to-G model folder that inference loads.

    python custom/zero1tog/scripts/export_unet.py TRIAL_OR_CKPT OUT_FOLDER [--raw] [--base FOLDER]

TRIAL_OR_CKPT: a trial folder (its ckpts/last.ckpt), a checkpoint file, or LAST:<experiment folder>.
OUT_FOLDER gets

- ``unet/``: the trial's EMA UNet (``--raw``: the trained weights themselves) as a diffusers folder
  (``config.json`` + ``diffusion_pytorch_model.safetensors``, written by ``Zero1toGUNet.save_pretrained``); every
  tensor's name and shape is checked against the official layout of its config before anything is written;
- ``vae/``, ``image_encoder/`` and (if there) ``scheduler/``: copied from the base model the trial was trained from
  (its ``system.pretrained_model_name_or_path``), which must be a local folder; a hub id (or a plain checkpoint
  without its trial) needs ``--base FOLDER``, a local copy of that model. When the trial trained on another
  prediction type than the base's scheduler says (``system.prediction_type``, e.g. ``v_prediction``), the exported
  ``scheduler/scheduler_config.json`` says the trained one (written from the base's scheduler config, or from
  SD-image-variations' when the base has none), so that inference samples the way the UNet was trained;
- ``export.json``: where it came from (checkpoint, step, ema/raw, base).

Then ``python launch.py --config custom/zero1tog/configs/image-to-gaussians.yaml --test system.image=PHOTO.png
system.pretrained_model_name_or_path=OUT_FOLDER`` (or ``scripts/image_to_gaussians.py --model OUT_FOLDER``) samples
with it. The trial is only read: OUT_FOLDER may not lie inside it, and it must be new or empty. Everything is
written into a temporary sibling folder first and moved into place at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

BASE_PARTS = ("vae", "image_encoder")  # required
OPTIONAL_PARTS = ("scheduler", "feature_extractor")


class ExportError(Exception):
    """Something the user must fix; the message says what."""


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def resolve_source(source: str) -> Tuple[str, Optional[str], Any]:
    """``(checkpoint, trial folder or None, the trial's system config or None)``."""
    from threestudio.utils.config import ConfigError
    from threestudio.utils.trials import is_trial_checkpoint, load_trial_config, resolve_checkpoint, trial_of_checkpoint

    try:
        ckpt = resolve_checkpoint(source, key="TRIAL_OR_CKPT")
    except ConfigError as e:
        raise ExportError(str(e)) from None
    if not os.path.isfile(ckpt):
        raise ExportError(f"no checkpoint file {os.path.abspath(ckpt)}: pass a trial folder, a .ckpt file or "
                          "LAST:<experiment folder>")
    if is_trial_checkpoint(ckpt):
        trial = trial_of_checkpoint(ckpt)
        try:
            cfg = load_trial_config(ckpt).system
        except ConfigError:
            cfg = None
        return ckpt, trial, cfg
    return ckpt, None, None


def check_out_folder(out: str, protected: str, what: str) -> None:
    """OUT must not lie inside ``protected`` (the trial, or the bare checkpoint's folder), and be new or empty."""
    if _inside(out, protected) or _inside(protected, out):
        raise ExportError(f"refusing to write into {what} {os.path.realpath(protected)} (OUT_FOLDER "
                          f"{os.path.abspath(out)} lies inside it or contains it): the trial is only read; choose an "
                          "output folder elsewhere")
    if os.path.lexists(out):
        if not os.path.isdir(out):
            raise ExportError(f"OUT_FOLDER {os.path.abspath(out)} exists and is not a folder; choose a new folder")
        if os.listdir(out):
            raise ExportError(f"refusing to write into the non-empty folder {os.path.abspath(out)}: OUT_FOLDER must "
                              "be new or empty (nothing there is overwritten)")


def resolve_base(system_cfg: Any, base: Optional[str]) -> str:
    """The local base-model folder whose vae/ and image_encoder/ (and scheduler/) go into the export."""
    from threestudio.utils.weights import is_local_path

    if base is not None:
        folder = os.path.abspath(os.path.expanduser(base))
        origin = "--base"
    else:
        name = None if system_cfg is None else system_cfg.get("pretrained_model_name_or_path")
        if not name:
            raise ExportError("the checkpoint has no trial config naming its base model (no configs/parsed.yaml "
                              "next to it): pass --base FOLDER, a local copy of the base model with vae/ and "
                              "image_encoder/ (e.g. lambdalabs/sd-image-variations-diffusers)")
        if not is_local_path(str(name)):
            raise ExportError(f"the trial's system.pretrained_model_name_or_path is the hub id '{name}', not a local "
                              f"folder, so its vae/ and image_encoder/ cannot be copied: pass --base FOLDER, a local "
                              f"copy of it (e.g. `huggingface-cli download {name} --local-dir FOLDER`)")
        folder = os.path.abspath(os.path.expanduser(str(name)))
        origin = "the trial's system.pretrained_model_name_or_path"
    missing = [p for p in BASE_PARTS if not os.path.isdir(os.path.join(folder, p))]
    if not os.path.isdir(folder) or missing:
        what = "does not exist" if not os.path.isdir(folder) else f"has no {', '.join(p + '/' for p in missing)}"
        raise ExportError(f"the base model folder {folder} ({origin}) {what}: pass --base FOLDER, a local copy of the "
                          f"base model with {', '.join(p + '/' for p in BASE_PARTS)}")
    return folder


def unet_config(system_cfg: Any, base: str) -> Dict[str, Any]:
    """The exported UNet's config: the trial's UNet source (``system.unet_name_or_path``, else the base) read from
    its ``unet/config.json``, grown as :func:`.model.loading.load_unet` grows a base SD UNet (the fork's changes plus
    ``system.unet_changes``); the official full-size config when that source is a hub id without a local copy."""
    from custom.zero1tog.model.layout import ZERO1TOG_CHANGES, zero1tog_unet_config
    from custom.zero1tog.model.loading import is_base_config
    from threestudio.utils.weights import is_local_path

    changes: Dict[str, Any] = {}
    source = base
    if system_cfg is not None:
        from omegaconf import OmegaConf

        raw_changes = system_cfg.get("unet_changes") or {}
        changes = dict(OmegaConf.to_container(raw_changes) if OmegaConf.is_config(raw_changes) else raw_changes)
        if system_cfg.get("unet_name_or_path"):
            source = str(system_cfg.get("unet_name_or_path"))
    if not is_local_path(source):
        return zero1tog_unet_config(**changes)
    path = os.path.join(os.path.expanduser(source), "unet", "config.json")
    if not os.path.isfile(path):
        raise ExportError(f"no UNet config {path}: the exported UNet's architecture comes from the UNet the trial "
                          "was trained from; pass --base FOLDER with unet/config.json")
    with open(path) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    if is_base_config(cfg):
        return {**cfg, **ZERO1TOG_CHANGES, **changes}
    return cfg


def build_unet(cfg: Dict[str, Any], state: Dict[str, Any]) -> Any:
    """A :class:`Zero1toGUNet` of ``cfg`` holding ``state`` (checked first against the official layout of ``cfg``)."""
    import torch

    from custom.zero1tog.model.layout import check_layout, unet_layout
    from custom.zero1tog.model.unet import Zero1toGUNet

    layout = unet_layout({"cd_attention_mid": True, **cfg})
    problems = check_layout({k: tuple(v.shape) for k, v in state.items()}, layout)
    if problems:
        raise ExportError("the checkpoint's UNet tensors do not match the layout of its config:\n    "
                          + "\n    ".join(problems[:12]))
    with torch.device("meta"):
        unet = Zero1toGUNet(**cfg)
    unet.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in list(unet.named_parameters()) + list(unet.named_buffers()) if t.is_meta]
    if left:  # pragma: no cover - the layout check covers every tensor
        raise ExportError(f"tensors left unset: {left[:8]}")
    return unet.eval()


def _trained_prediction_type(system_cfg: Any) -> Optional[str]:
    """The trial's ``system.prediction_type`` (None: the base scheduler's own, nothing to change)."""
    value = system_cfg.get("prediction_type") if system_cfg is not None else None
    return str(value) if value else None


def set_prediction_type(scheduler_dir: str, prediction_type: str) -> bool:
    """Make ``scheduler_dir/scheduler_config.json`` say ``prediction_type`` (creating it from SD-image-variations'
    scheduler config when absent). Returns True when the file was written, False when it already said so."""
    from custom.zero1tog.inference import BASE_SCHEDULER_CONFIG

    path = os.path.join(scheduler_dir, "scheduler_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            cfg = json.load(f)
        if cfg.get("prediction_type", "epsilon") == prediction_type:
            return False
    else:
        os.makedirs(scheduler_dir, exist_ok=True)
        cfg = {"_class_name": "DDPMScheduler", **BASE_SCHEDULER_CONFIG}
    cfg["prediction_type"] = prediction_type
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return True


def export(source: str, out: str, raw: bool = False, base: Optional[str] = None,
           log: Any = print) -> Dict[str, Any]:
    """Write the export (module docstring); returns the provenance written to ``export.json``."""
    from threestudio.utils.misc import load_module_weights

    ckpt, trial, system_cfg = resolve_source(source)
    if trial is not None:
        check_out_folder(out, trial, "the trial folder")
    else:
        check_out_folder(out, os.path.dirname(os.path.abspath(ckpt)), "the checkpoint's folder")
    base_folder = resolve_base(system_cfg, base)
    if _inside(out, base_folder):
        raise ExportError(f"refusing to write into the base model folder {base_folder}; choose another OUT_FOLDER")
    cfg = unet_config(system_cfg, base_folder)
    sd, _, step = load_module_weights(ckpt, map_location="cpu")
    prefix = "unet." if raw else "unet_ema."
    state = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not state:
        if not raw and any(k.startswith("unet.") for k in sd):
            raise ExportError(f"{ckpt} holds no EMA UNet ('unet_ema.' weights; the trial trained with "
                              "system.ema.enabled=false): pass --raw to export its trained weights")
        raise ExportError(f"{ckpt} holds no '{prefix}' weights: not a zero1tog-system checkpoint")
    unet = build_unet(cfg, state)

    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp", dir=parent)
    try:
        unet.save_pretrained(os.path.join(tmp, "unet"), safe_serialization=True)
        copied = []
        for part in BASE_PARTS + OPTIONAL_PARTS:
            src = os.path.join(base_folder, part)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(tmp, part))
                copied.append(part)
        pred = _trained_prediction_type(system_cfg)
        rewritten = pred is not None and set_prediction_type(os.path.join(tmp, "scheduler"), pred)
        info = {"checkpoint": os.path.abspath(ckpt), "trial": trial, "global_step": int(step),
                "weights": "raw" if raw else "ema", "base": base_folder, "copied_from_base": copied,
                "unet_parameters": int(sum(p.numel() for p in unet.parameters())),
                "prediction_type": pred or "the base scheduler's", "scheduler_prediction_type_written": rewritten}
        with open(os.path.join(tmp, "export.json"), "w") as f:
            json.dump(info, f, indent=2)
        from custom.zero1tog.model.loading import check_unet_folder

        check_unet_folder(tmp)  # what load_unet checks: names and shapes of the written tensors
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"exported the {info['weights']} UNet of {ckpt} (step {step}, {info['unet_parameters'] / 1e6:.1f} M "
        f"parameters) with {', '.join(p + '/' for p in copied)} of {base_folder} to {out}")
    return info


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="TRIAL_OR_CKPT")
    p.add_argument("out", metavar="OUT_FOLDER")
    p.add_argument("--raw", action="store_true", help="export the trained weights, not their EMA")
    p.add_argument("--base", default=None, metavar="FOLDER",
                   help="local base model folder (vae/, image_encoder/, scheduler/); default: the trial's "
                        "system.pretrained_model_name_or_path when it is a local folder")
    args = p.parse_args(argv)

    from threestudio.utils.extensions import import_extension

    import_extension(os.path.join(REPO, "custom", "zero1tog"), namespace="custom")
    try:
        export(args.source, args.out, raw=args.raw, base=args.base)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
