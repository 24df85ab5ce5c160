"""Old import path of :mod:`threestudio.models.diffusion.mvdream.unet` (the same module object)."""

import sys

from threestudio.models.diffusion.mvdream import unet as _module

sys.modules[__name__] = _module
