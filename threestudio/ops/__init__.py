"""Pure tensor functions: no configs, no registry.

Each op has a readable PyTorch reference and, where speed needs it, a fast path behind ``backend="auto"``.
Import the submodules directly (``from threestudio.ops import hashgrid``); nothing heavy is imported here.
"""
