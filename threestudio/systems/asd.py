"""``asd-system``: text-to-3D by Asynchronous Score Distillation (ScaleDreamer's prompt-specific setting).

The training step, building order and evaluation are those of ``dreamfusion-system`` (see
:mod:`threestudio.systems.dreamfusion`): render -> guidance -> ``loss_asd`` (weighted by ``lambda_asd``) plus the
regularisers (sparsity, opaque, orient, z-variance, eikonal). The prompt processor and the ASD guidance are built in
``on_fit_start`` (training only). What differs is the default guidance module, ``stable-diffusion-asd-guidance``.
"""

from __future__ import annotations

import threestudio
from threestudio.systems.dreamfusion import DreamFusion
from threestudio.systems.schema import ASDSystemConfig


@threestudio.register("asd-system")
class ASDSystem(DreamFusion):
    Config = ASDSystemConfig
    cfg: Config

