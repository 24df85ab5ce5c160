"""Optimizers and learning-rate schedulers from config.

``optimizer: {name: Adam, args: {lr: 0.01, betas: [0.9, 0.99], eps: 1.e-15}, params: {geometry.encoding: {lr: 0.01},
background: {lr: 0.001}}}``. ``name`` is any ``torch.optim`` class or ``Adan``; ``params`` maps attribute paths of the
system to per-group settings (no ``params``: every parameter in one group).

``scheduler: {name: ExponentialLR, interval: step, args: {gamma: 0.999}}``; ``SequentialLR`` and
``ChainedScheduler`` take ``schedulers: [...]`` (and ``milestones`` for SequentialLR).
"""

from __future__ import annotations

import difflib
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from threestudio.utils.config import ConfigError, ConfigIssue


def _plain(x: Any) -> Any:
    if OmegaConf.is_config(x):
        return OmegaConf.to_container(x, resolve=True)
    return x


def _optimizer_classes() -> Dict[str, type]:
    classes = {n: c for n, c in vars(torch.optim).items()
               if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer}
    from threestudio.systems.optimizers import Adan

    classes["Adan"] = Adan
    return classes


def get_attr_path(root: Any, path: str, key: str) -> Any:
    obj = root
    for part in path.split("."):
        if not hasattr(obj, part):
            children = [n for n, _ in obj.named_children()] if isinstance(obj, nn.Module) else []
            close = difflib.get_close_matches(part, children, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"children here: {', '.join(children) or '(none)'}"
            raise ConfigError([ConfigIssue(key, f"the system has no module '{path}' (no '{part}')", "", hint)])
        obj = getattr(obj, part)
    return obj


def parse_optimizer(config: Any, model: nn.Module) -> torch.optim.Optimizer:
    config = _plain(config) or {}
    name = config.get("name", "Adam")
    classes = _optimizer_classes()
    if name not in classes:
        close = difflib.get_close_matches(name, list(classes), n=1)
        raise ConfigError([ConfigIssue("system.optimizer.name", f"unknown optimizer '{name}'", "",
                                       f"did you mean '{close[0]}'?" if close else
                                       f"choose one of: {', '.join(sorted(classes))}")])
    args = dict(config.get("args", {}) or {})
    groups_cfg = config.get("params")
    if groups_cfg:
        groups: List[Dict[str, Any]] = []
        for path, settings in groups_cfg.items():
            module = get_attr_path(model, path, f"system.optimizer.params.{path}")
            params = list(module.parameters()) if isinstance(module, nn.Module) else [module]
            if not params:
                continue
            groups.append({"params": params, "name": path, **(settings or {})})
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "name": "all"}]
    return classes[name](groups, **args)


def parse_scheduler(config: Any, optimizer: torch.optim.Optimizer) -> Optional[Dict[str, Any]]:
    config = _plain(config)
    if not config:
        return None
    interval = config.get("interval", "epoch")
    if interval not in ("step", "epoch"):
        raise ConfigError([ConfigIssue("system.scheduler.interval", f"must be 'step' or 'epoch', got {interval!r}")])
    return {"scheduler": _build_scheduler(config, optimizer), "interval": interval}


def _build_scheduler(config: Dict[str, Any], optimizer: torch.optim.Optimizer) -> Any:
    name = config.get("name")
    lr_sched = torch.optim.lr_scheduler
    if name in ("SequentialLR", "ChainedScheduler"):
        subs = [_build_scheduler(c, optimizer) for c in config.get("schedulers", [])]
        if name == "SequentialLR":
            return lr_sched.SequentialLR(optimizer, subs, milestones=config["milestones"])
        return lr_sched.ChainedScheduler(subs)
    cls = getattr(lr_sched, str(name), None)
    if not isinstance(cls, type):
        names = [n for n, c in vars(lr_sched).items() if isinstance(c, type) and n.endswith(("LR", "Scheduler"))]
        close = difflib.get_close_matches(str(name), names, n=1)
        raise ConfigError([ConfigIssue("system.scheduler.name", f"unknown scheduler '{name}'", "",
                                       f"did you mean '{close[0]}'?" if close else f"choose one of: {', '.join(names)}")])
    args = dict(config.get("args", {}) or {})
    if name == "LambdaLR" and isinstance(args.get("lr_lambda"), str):
        expr = args["lr_lambda"]
        args["lr_lambda"] = lambda step, _e=expr: eval(_e, {"__builtins__": {}}, {"step": step})  # noqa: S307
    return cls(optimizer, **args)
