"""Coarse-to-fine: initialise a stage's geometry from an earlier trial (``system.geometry_convert_from``)."""

from __future__ import annotations

from typing import Any

from threestudio.registry import find
from threestudio.utils.log import info
from threestudio.utils.misc import load_module_weights


def convert_geometry(source: str, cfg: Any) -> Any:
    """The geometry of ``cfg.geometry_type`` made from the earlier stage's at ``source`` (a checkpoint, a trial folder,
    or 'LAST:<exp dir>' for the newest trial there); ``cfg``: this system's config."""
    from threestudio.utils.trials import load_trial_config, resolve_checkpoint

    ckpt = resolve_checkpoint(source, key="system.geometry_convert_from")
    prev_system = load_trial_config(ckpt).system
    prev_geometry_cfg = prev_system.geometry
    for k, v in cfg.geometry_convert_override.items():
        prev_geometry_cfg[k] = v
    prev_cls = find(prev_system.geometry_type, "geometry", "system.geometry_type (of the earlier stage)")
    prev_geometry = prev_cls(prev_geometry_cfg)
    state_dict, epoch, global_step = load_module_weights(ckpt, module_name="geometry", map_location="cpu")
    prev_geometry.load_state_dict(state_dict, strict=False)
    prev_geometry.do_update_step(epoch, global_step, on_load_weights=True)
    new_cls = find(cfg.geometry_type, "geometry", "system.geometry_type")
    info(f"Converting {prev_system.geometry_type} from {ckpt} to {cfg.geometry_type}")
    return new_cls.create_from(prev_geometry, cfg.geometry, copy_net=cfg.geometry_convert_inherit_texture)
