"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"), version 0.1,
in plain torch: no torchvision, no ``lpips`` package, nothing downloaded. The weights are given by path:

- the backbone: torchvision's ImageNet state dict, ``alexnet-owt-7be5be79.pth`` or ``vgg16-397923af.pth`` from
  https://download.pytorch.org/models/ (``features.N.weight/bias``; the ``classifier.*`` keys are ignored);
- the linear calibration: the lpips package's ``lpips/weights/v0.1/alex.pth`` or ``vgg.pth``
  (``linK.model.1.weight``, shape [1, C, 1, 1], K = 0..4).

Either may be a ``.pth``/``.pt`` (read with ``torch.load(weights_only=True)``) or a ``.safetensors`` file.

LPIPS(x, y) = sum over taps l of mean over pixels of sum_c w_lc (f̂_l(x) - f̂_l(y))²_c, with f̂ the features at
tap l normalised to unit length over channels (eps 1e-10), computed on ((2x - 1) - shift) / scale. The taps are the ReLU
outputs lpips uses: AlexNet relu1..relu5 (``features`` 1, 4, 7, 9, 11), VGG16 relu1_2, relu2_2, relu3_3, relu4_3,
relu5_3 (``features`` 3, 8, 15, 22, 29).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from threestudio.utils.config import ConfigError, ConfigIssue
from threestudio.utils.weights import PretrainedWeightsError

# torchvision ``features`` layouts up to the last tap: (in, out, kernel, stride, padding) convs, "R" ReLU, ("M", k, s)
_ALEX = [(3, 64, 11, 4, 2), "R", ("M", 3, 2), (64, 192, 5, 1, 2), "R", ("M", 3, 2), (192, 384, 3, 1, 1), "R",
         (384, 256, 3, 1, 1), "R", (256, 256, 3, 1, 1), "R"]


def _vgg16() -> List[Any]:
    layers: List[Any] = []
    cin = 3
    for c in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]:
        if c == "M":
            layers.append(("M", 2, 2))
        else:
            layers += [(cin, c, 3, 1, 1), "R"]
            cin = c
    return layers


NETS = {
    "alex": dict(layers=_ALEX, taps=(1, 4, 7, 9, 11), channels=(64, 192, 384, 256, 256), name="AlexNet",
                 backbone="alexnet-owt-7be5be79.pth"),
    "vgg": dict(layers=_vgg16(), taps=(3, 8, 15, 22, 29), channels=(64, 128, 256, 512, 512), name="VGG16",
                backbone="vgg16-397923af.pth"),
}
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LPIPSWeightsError(PretrainedWeightsError):
    """LPIPS weight files missing, unreadable or not fitting (a ConfigError: launch.py prints it and exits 2).
    ``issues`` holds one entry per problem file."""

    def __init__(self, issues: List[ConfigIssue]) -> None:
        ConfigError.__init__(self, issues, header="LPIPS weights not available")
        self.key = issues[0].key


class Trunk(nn.Module):
    """The ``features`` part of torchvision's AlexNet / VGG16 (same parameter names), returning the tapped ReLUs."""

    def __init__(self, net: str) -> None:
        super().__init__()
        spec = NETS[net]
        self.taps = spec["taps"]
        mods: List[nn.Module] = []
        for layer in spec["layers"]:
            if layer == "R":
                mods.append(nn.ReLU())
            elif layer[0] == "M":
                mods.append(nn.MaxPool2d(layer[1], layer[2]))
            else:
                cin, cout, k, s, p = layer
                mods.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
        self.features = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


class _Linear(nn.Module):
    """lpips' ``NetLinLayer``: (dropout at index 0 while training,) a 1x1 convolution to one channel, no bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1. ``LPIPS(net)`` has random weights; use :meth:`from_paths` for the real metric."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in NETS:
            raise ValueError(f"LPIPS net must be one of {sorted(NETS)}, got {net!r}")
        self.net_type = net
        self.net = Trunk(net)
        for k, c in enumerate(NETS[net]["channels"]):
            setattr(self, f"lin{k}", _Linear(c))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_paths(cls, backbone_weights: str, linear_weights: str, net: str = "alex",
                   key: str = "lpips") -> "LPIPS":
        """Load torchvision backbone weights and lpips v0.1 linear weights; raises :class:`LPIPSWeightsError`
        (naming the file, the missing / unexpected / misshapen keys and where to get the file). ``key`` is the config
        key the paths came from, used in the error."""
        model = cls(net)
        spec, own = NETS[net], model.state_dict()
        files = [  # (path, config key, what, where to get it, expected keys and shapes, key prefix in the model)
            (backbone_weights, f"{key}.backbone_weights", f"LPIPS {spec['name']} backbone",
             f"torchvision's ImageNet {spec['name']} weights {spec['backbone']}: "
             f"https://download.pytorch.org/models/{spec['backbone']}",
             {k[4:]: v.shape for k, v in own.items() if k.startswith("net.")}, "net."),
            (linear_weights, f"{key}.linear_weights", f"LPIPS {net} linear",
             f"the lpips package's v0.1 linear weights lpips/weights/v0.1/{net}.pth (in `pip download lpips` or "
             f"https://github.com/richzhang/PerceptualSimilarity/tree/master/lpips/weights/v0.1)",
             {k: v.shape for k, v in own.items() if k.startswith("lin")}, "")]
        state, issues = {}, []
        for path, ckey, what, how, expected, prefix in files:
            try:
                sd = _read(path, ckey, what, how)
                if prefix:  # torchvision's classifier is not part of the trunk
                    sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
                _check(sd, expected, os.fspath(path), ckey, what, how)
                state.update({prefix + k: v for k, v in sd.items()})
            except LPIPSWeightsError as e:  # report both files' problems at once
                issues += e.issues
        if issues:
            raise LPIPSWeightsError(issues)
        model.load_state_dict(state)
        return model

    def distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS per image, [B], of images [H, W, 3] or [B, H, W, 3] in [0, 1]."""
        if pred.shape != target.shape or pred.dim() not in (3, 4) or pred.shape[-1] != 3:
            raise ValueError(f"LPIPS takes two images [H, W, 3] or [B, H, W, 3] of the same shape, got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}")
        w = self.lin0.model[1].weight
        shift, scale = (torch.tensor(v, dtype=w.dtype, device=w.device).view(1, 3, 1, 1) for v in (_SHIFT, _SCALE))
        x, y = (((t if t.dim() == 4 else t[None]).permute(0, 3, 1, 2).to(w) * 2 - 1 - shift) / scale
                for t in (pred, target))
        total = torch.zeros(x.shape[0], dtype=w.dtype, device=w.device)
        for k, (fx, fy) in enumerate(zip(self.net(x), self.net(y))):
            d = (_unit(fx) - _unit(fy)) ** 2
            total = total + getattr(self, f"lin{k}")(d).mean(dim=(1, 2, 3))
        return total

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS (a 0-d tensor) of images [H, W, 3] or [B, H, W, 3] in [0, 1]."""
        return self.distance(pred, target).mean()


def _error(key: str, message: str, suggestion: str) -> LPIPSWeightsError:
    return LPIPSWeightsError([ConfigIssue(key, message, "", suggestion)])


def _read(path: Any, key: str, what: str, how: str) -> Dict[str, torch.Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise _error(key, f"{what} weights not found: {path} does not exist", f"get {how}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise _error(key, f"{what} weights {path} could not be read ({type(e).__name__}: {first})",
                     f"get {how}") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise _error(key, f"{what} weights {path} are not a state dict (a flat dict of tensors)", f"get {how}")
    return sd


def _check(sd: Dict[str, torch.Tensor], expected: Dict[str, torch.Size], path: str, key: str, what: str,
           how: str) -> None:
    def names(ks: List[str]) -> str:
        return ", ".join(ks[:8]) + (f" and {len(ks) - 8} more" if len(ks) > 8 else "")

    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} (expected {list(s)}, got {list(sd[k].shape)})" for k, s in expected.items()
              if k in sd and sd[k].shape != s]
    problems = ([f"missing keys {names(missing)}"] if missing else []) + \
               ([f"unexpected keys {names(unexpected)}"] if unexpected else []) + \
               ([f"wrong shapes {names(shapes)}"] if shapes else [])
    if problems:
        raise _error(key, f"{what} weights {path} do not fit: {'; '.join(problems)}", f"use {how}")


def load_lpips(cfg: Any = None, key: str = "lpips") -> Optional[LPIPS]:
    """An :class:`LPIPS` from a config with ``backbone_weights``, ``linear_weights`` and ``net`` (default "alex")
    (a dict, DictConfig or object), or None when ``cfg`` is None or names no weights: report LPIPS only then."""
    if cfg is None:
        return None
    get = (lambda n, d=None: cfg.get(n, d)) if hasattr(cfg, "get") else (lambda n, d=None: getattr(cfg, n, d))
    backbone, linear = get("backbone_weights"), get("linear_weights")
    if not backbone and not linear:
        return None
    for name, value in (("backbone_weights", backbone), ("linear_weights", linear)):
        if not value:
            raise _error(f"{key}.{name}", "LPIPS needs both backbone_weights and linear_weights",
                         "set both paths, or neither to skip LPIPS")
    return LPIPS.from_paths(backbone, linear, get("net", "alex") or "alex", key=key)
