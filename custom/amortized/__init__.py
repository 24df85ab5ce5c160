"""ScaleDreamer-style amortized text-to-3D: prompt libraries, an embedding store, text-conditioned generators
(``hyper-ingp``, ``3dconv-net``, ``triplane-transformer``), a VolSDF renderer, a text-conditioned background and the
``multiprompt-generator`` system. See README.md in this folder."""

from . import data, prompt_processor, system  # noqa: F401  (register)
from .models import background, conv3d_net, hyper_ingp, renderer, triplane_transformer  # noqa: F401
