"""GET3D generator (plain PyTorch, official checkpoints) and NADA text-guided adaptation. See README.md."""

from . import data, generator, system  # noqa: F401  (register get3d-generator, get3d-nada, get3d-nada-datamodule)
