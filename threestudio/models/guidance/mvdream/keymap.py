"""Old import path of :mod:`threestudio.models.diffusion.mvdream.keymap` (the same module object)."""

import sys

from threestudio.models.diffusion.mvdream import keymap as _module

sys.modules[__name__] = _module
