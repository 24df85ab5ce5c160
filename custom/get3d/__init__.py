"""GET3D generator (plain PyTorch, official checkpoints) and NADA text-guided adaptation. See README.md.

Importing the package registers get3d-generator, get3d-nada and get3d-nada-datamodule from ``_manifest.py``
(generated: ``python -m threestudio.utils.manifest --write``); each module is imported when its name is first
looked up."""

from threestudio.registry import add_manifest

add_manifest(__name__)
