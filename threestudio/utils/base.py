"""Base classes, API-compatible with threestudio's ``threestudio.utils.base``.

- :class:`Updateable`: ``do_update_step(epoch, global_step)`` calls ``update_step`` on the object and on every
  ``Updateable`` reachable through its attributes (child modules, lists, dicts), each once.
- :class:`BaseObject`: configurable, updateable, not an ``nn.Module`` (guidance, prompt processors).
- :class:`BaseModule`: an ``nn.Module`` that is configurable and updateable (geometry, materials, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Set

import torch
import torch.nn as nn

from threestudio.utils.base_schema import BaseModuleConfig, BaseObjectConfig
from threestudio.utils.config import config_owner, parse_structured


class Configurable:
    @dataclass
    class Config:
        pass

    def __init__(self, cfg: Optional[Any] = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)


def _children(obj: Any) -> Iterator[Any]:
    """Public attributes (and, for modules, registered child modules), expanding lists and dicts."""
    values = [v for k, v in vars(obj).items() if not k.startswith("_")]
    if isinstance(obj, nn.Module):
        values += list(obj._modules.values())
    for v in values:
        if isinstance(v, (list, tuple, nn.ModuleList)):
            yield from v
        elif isinstance(v, (dict, nn.ModuleDict)):
            yield from v.values()
        else:
            yield v


class Updateable:
    """Objects whose state follows the training step (schedules, progressive levels, grids)."""

    def do_update_step(self, epoch: int, global_step: int, on_load_weights: bool = False,
                       _seen: Optional[Set[int]] = None) -> None:
        seen = set() if _seen is None else _seen
        if id(self) in seen:
            return
        seen.add(id(self))
        for child in _children(self):
            if isinstance(child, Updateable):
                child.do_update_step(epoch, global_step, on_load_weights=on_load_weights, _seen=seen)
        self.update_step(epoch, global_step, on_load_weights=on_load_weights)

    def do_update_step_end(self, epoch: int, global_step: int, _seen: Optional[Set[int]] = None) -> None:
        seen = set() if _seen is None else _seen
        if id(self) in seen:
            return
        seen.add(id(self))
        for child in _children(self):
            if isinstance(child, Updateable):
                child.do_update_step_end(epoch, global_step, _seen=seen)
        self.update_step_end(epoch, global_step)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """Override to follow the step. Must be a pure function of (epoch, global_step) and saved state, so that a
        resumed run reaches the same state as one that never stopped."""

    def update_step_end(self, epoch: int, global_step: int) -> None:
        pass


def update_if_possible(module: Any, epoch: int, global_step: int) -> None:
    if isinstance(module, Updateable):
        module.do_update_step(epoch, global_step)


def update_end_if_possible(module: Any, epoch: int, global_step: int) -> None:
    if isinstance(module, Updateable):
        module.do_update_step_end(epoch, global_step)


class BaseObject(Updateable):
    Config = BaseObjectConfig

    cfg: Config  # type: ignore[assignment]

    def __init__(self, cfg: Optional[Any] = None, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, owner=config_owner(type(self)))
        self.device = torch.device("cpu")
        self.configure(*args, **kwargs)

    def configure(self, *args: Any, **kwargs: Any) -> None:
        pass

    def to(self, device: Any) -> "BaseObject":
        self.device = torch.device(device)
        return self


class BaseModule(nn.Module, Updateable):
    Config = BaseModuleConfig

    cfg: Config  # type: ignore[assignment]

    def __init__(self, cfg: Optional[Any] = None, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, owner=config_owner(type(self)))
        self.register_buffer("_dummy", torch.zeros(0).float(), persistent=False)
        self.configure(*args, **kwargs)
        if self.cfg.weights is not None:
            from threestudio.utils.misc import load_module_weights

            path, _, prefix = str(self.cfg.weights).partition(":")
            state_dict, epoch, global_step = load_module_weights(path, module_name=prefix or None,
                                                                 map_location="cpu")
            self.load_state_dict(state_dict)
            self.do_update_step(epoch, global_step, on_load_weights=True)

    @property
    def device(self) -> torch.device:
        return self._dummy.device

    def configure(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_scene(self, scene: Dict[str, Any]) -> None:
        """Receive what the data module knows about the scene (``BaseDataModule.scene_info``, plus ``datamodule``)
        before training or loading a checkpoint; reconstruction systems call it. Default: nothing to do."""
