"""``neural-radiance-material``: view-dependent colour from geometry features, with per-image appearance codes.

``rgb = sigmoid(MLP([features, SH(view direction), appearance(image)]))`` as in nerfacto: the view direction is
encoded with spherical harmonics (``dir_encoding_config``, 4 bands = 16 coefficients) and each training image has a
learned appearance code of ``appearance_dim`` numbers (exposure, white balance, lighting changes between photos).

The codes are created when the system learns the number of training images (:meth:`set_scene`, called before
training or loading a checkpoint; a checkpoint's table is taken as saved). Evaluation renders (no ``image_index``)
use the mean code (``eval_appearance: mean``, nerfstudio's default) or zeros (``zero``). ``appearance_dim: 0``
turns the codes off.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn

import threestudio
from threestudio.models.materials.base import BaseMaterial
from threestudio.models.materials.schema import NeuralRadianceMaterialConfig
from threestudio.models.networks import get_encoding, get_mlp
from threestudio.utils.activations import get_color_activation


@threestudio.register("neural-radiance-material")
class NeuralRadianceMaterial(BaseMaterial):
    Config = NeuralRadianceMaterialConfig

    cfg: Config

    def configure(self) -> None:
        if self.cfg.eval_appearance not in ("mean", "zero"):
            raise ValueError(f"system.material.eval_appearance={self.cfg.eval_appearance!r}: use mean or zero.")
        self.dir_encoding = get_encoding(3, self.cfg.dir_encoding_config)
        n_in = self.cfg.input_feature_dims + self.dir_encoding.n_output_dims + self.cfg.appearance_dim
        self.network = get_mlp(n_in, 3, self.cfg.mlp_network_config)
        self.activation = get_color_activation(self.cfg.color_activation)
        self.appearance: Optional[nn.Embedding] = None

    # ---- appearance codes
    def set_scene(self, scene: Dict[str, Any]) -> None:
        """Create the appearance table for ``scene["n_train"]`` images (kept if it already has that size)."""
        n = int(scene.get("n_train") or 0)
        if self.cfg.appearance_dim <= 0 or n <= 0:
            return
        if self.appearance is None or self.appearance.num_embeddings != n:
            device = next(self.network.parameters()).device
            self.appearance = nn.Embedding(n, self.cfg.appearance_dim).to(device)
            nn.init.normal_(self.appearance.weight, 0.0, 0.01)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        key = f"{prefix}appearance.weight"
        if key in state_dict and (self.appearance is None or self.appearance.weight.shape != state_dict[key].shape):
            n, d = state_dict[key].shape
            self.appearance = nn.Embedding(n, d).to(state_dict[key].device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _codes(self, image_index: Optional[torch.Tensor], n: int, like: torch.Tensor) -> Optional[torch.Tensor]:
        d = self.cfg.appearance_dim
        if d <= 0:
            return None
        if self.appearance is None:
            return like.new_zeros(n, d)
        if image_index is not None:
            return self.appearance(image_index.reshape(-1).long())
        if self.cfg.eval_appearance == "mean":
            return self.appearance.weight.mean(0, keepdim=True).expand(n, d)
        return like.new_zeros(n, d)

    # ---- colour
    def forward(self, features: torch.Tensor, viewdirs: torch.Tensor, image_index: Optional[torch.Tensor] = None,
                **kwargs: Any) -> torch.Tensor:
        """``features`` [..., F], unit ``viewdirs`` [..., 3] (from the camera into the scene), optional
        ``image_index`` [...] (long; the training image of each sample) -> rgb [..., 3]."""
        lead = features.shape[:-1]
        f = features.reshape(-1, features.shape[-1])
        parts = [f, self.dir_encoding(viewdirs.reshape(-1, 3))]
        codes = self._codes(image_index, f.shape[0], f)
        if codes is not None:
            parts.append(codes.to(f.dtype))
        return self.activation(self.network(torch.cat(parts, dim=-1))).reshape(*lead, 3)
