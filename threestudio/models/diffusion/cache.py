"""Where diffusion models keep their caches: the cache root and inductor's on-disk compile cache."""

from __future__ import annotations

import os
from typing import Optional

from threestudio.utils.misc import default_cache_root

__all__ = ["default_cache_root", "configure_compile_cache"]


def configure_compile_cache(folder: Optional[str]) -> str:
    """Point inductor's on-disk caches at ``folder`` (unless the user set TORCHINDUCTOR_CACHE_DIR) and turn them on.

    ``folder`` None: ``<cache root>/inductor``. Inductor writes its default (``/tmp/torchinductor_<user>``) into
    TORCHINDUCTOR_CACHE_DIR the first time it looks the folder up, so a value equal to that default does not count as
    the user's choice."""
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        inductor_default = default_cache_dir()
    except Exception:  # pragma: no cover - older torch
        inductor_default = None
    if env and env != inductor_default:
        folder = env
    else:
        folder = os.path.abspath(os.path.expanduser(folder or os.path.join(default_cache_root(), "inductor")))
    os.makedirs(folder, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    try:
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        import torch._functorch.config as functorch_config

        functorch_config.enable_autograd_cache = True
    except Exception:  # pragma: no cover - older torch
        pass
    return folder
