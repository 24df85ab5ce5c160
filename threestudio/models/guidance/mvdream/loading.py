"""Old import path of :mod:`threestudio.models.diffusion.mvdream.loading` (the same module object)."""

import sys

from threestudio.models.diffusion.mvdream import loading as _module

sys.modules[__name__] = _module
