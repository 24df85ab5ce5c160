"""Zero-1-to-G: splatter images (per-pixel 3D gaussians of 6 views) as five attribute images a 2D diffusion model
can generate; ground-truth splatters fitted to mesh renders, and their data module. See README.md in this folder."""

from . import data  # noqa: F401  (registers zero1tog-splatter-data)
from . import image_data  # noqa: F401  (registers zero1tog-image, the inference run's data module)
from . import model  # noqa: F401  (the UNet, its checked loader and the condition encoder; imports nothing heavy)
from . import system  # noqa: F401  (registers zero1tog-system)

__all__ = ["data", "image_data", "model", "system"]
