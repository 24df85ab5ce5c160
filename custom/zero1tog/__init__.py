"""Zero-1-to-G: splatter images (per-pixel 3D gaussians of 6 views) as five attribute images a 2D diffusion model
can generate; ground-truth splatters fitted to mesh renders, and their data module. See README.md in this folder.

Importing the package registers zero1tog-splatter-data, zero1tog-image and zero1tog-system from ``_manifest.py``
(generated: ``python -m threestudio.utils.manifest --write``); each module is imported when its name is first looked
up."""

from threestudio.registry import add_manifest

add_manifest(__name__)
