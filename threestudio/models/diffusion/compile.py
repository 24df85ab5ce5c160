"""Compiling the diffusion networks: the typed options, the ``torch.compile`` set-up and guard skipping.

A diffusion guidance compiles two functions, the UNet call and the VAE encode, with
``torch.compile(fullgraph=True, dynamic=False)``; with inductor's ``mode="reduce-overhead"`` that is CUDA graphs over
static shapes. Inductor's on-disk caches live under the cache root (:mod:`.cache`), so a second run reuses the
compiled kernels. Config keys (``system.guidance.``):

- ``compile``: on/off; None (default) = on for CUDA, off on the CPU;
- ``compile_options``: a :class:`CompileConfig` (mode, backend, vae, skip_guards, cache_dir).

The flat keys of earlier configs (``compile_mode``, ``compile_backend``, ``compile_vae``, ``compile_skip_guards``,
``compile_cache_dir``) are still read: set, they override the matching ``compile_options`` field and a warning names
the new key (:func:`resolve_compile_options`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Optional, Tuple

__all__ = ["CompileConfig", "CompileSettings", "LEGACY_COMPILE_KEYS", "SkipKnownGuards", "compile_enabled",
           "compile_unet_and_vae", "resolve_compile_options"]


@dataclass
class CompileConfig:
    """How the UNet call and the VAE encode are compiled (``system.guidance.compile_options``)."""

    mode: str = "reduce-overhead"  # torch.compile mode for inductor ("reduce-overhead" = CUDA graphs)
    backend: str = "inductor"  # another torch.compile backend (e.g. "eager": tracing only) for debugging
    vae: bool = True  # also compile the VAE encode (forward and backward)
    skip_guards: bool = True  # skip Dynamo's guard evaluation for input signatures already run (SkipKnownGuards)
    cache_dir: Optional[str] = None  # inductor's on-disk cache; default: $THREESTUDIO_CACHE/inductor


# flat keys of earlier guidance configs -> the CompileConfig field that replaced each
LEGACY_COMPILE_KEYS: Dict[str, str] = {
    "compile_mode": "mode",
    "compile_backend": "backend",
    "compile_vae": "vae",
    "compile_skip_guards": "skip_guards",
    "compile_cache_dir": "cache_dir",
}


@dataclass
class CompileSettings:
    """The compile fields of a module Config (the diffusion guidances' Configs extend it)."""

    compile: Optional[bool] = None  # None: on for CUDA, off on the CPU
    compile_options: CompileConfig = field(default_factory=CompileConfig)
    # deprecated flat keys, still read (a warning names the compile_options key that replaced each)
    compile_mode: Optional[str] = None  # -> compile_options.mode
    compile_backend: Optional[str] = None  # -> compile_options.backend
    compile_vae: Optional[bool] = None  # -> compile_options.vae
    compile_skip_guards: Optional[bool] = None  # -> compile_options.skip_guards
    compile_cache_dir: Optional[str] = None  # -> compile_options.cache_dir


def compile_enabled(cfg: CompileSettings, on_cuda: bool) -> bool:
    """``cfg.compile``, or (None) whether the module runs on CUDA."""
    return bool(cfg.compile if cfg.compile is not None else on_cuda)


def resolve_compile_options(cfg: CompileSettings, key: str = "system.guidance") -> CompileConfig:
    """The effective :class:`CompileConfig` of ``cfg``: ``compile_options`` with any deprecated flat key applied
    (each one set is reported once, naming the key that replaced it)."""
    from threestudio.utils.log import warn

    src = cfg.compile_options
    opts = CompileConfig(**{f.name: getattr(src, f.name) for f in fields(CompileConfig)})
    for old, new in LEGACY_COMPILE_KEYS.items():
        value = getattr(cfg, old)
        if value is not None:
            warn(f"{key}.{old} is deprecated: use {key}.compile_options.{new} (set to {value!r} here)")
            setattr(opts, new, value)
    return opts


class SkipKnownGuards:
    """Calls a ``torch.compile``d function; once an input signature has run, later calls with that signature skip
    Dynamo's guard evaluation (``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``), which costs ~0.6 ms of
    host time per call of the UNet or VAE: on a host-bound training step, that is step time.

    The signature is what the guards of these fixed-shape graphs depend on: grad mode, autocast and, per tensor
    argument, shape, strides, dtype, device and requires_grad (other arguments by value). A new signature runs with
    the guards (and compiles if needed) before it joins the known ones, so a resolution or batch-size change is never
    served by the wrong graph. Not covered: changing the guidance's modules or global torch flags in the middle of a
    run (``compile_options.skip_guards=false`` then)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.known: set = set()

    @staticmethod
    def signature(args: Tuple[Any, ...]) -> Tuple[Any, ...]:
        import torch

        return (torch.is_grad_enabled(), torch.is_autocast_enabled("cuda"), torch.is_autocast_enabled("cpu")) + tuple(
            (tuple(a.shape), a.stride(), a.dtype, a.device, a.requires_grad) if isinstance(a, torch.Tensor) else a
            for a in args)

    def __call__(self, *args: Any) -> Any:
        import torch

        key = self.signature(args)
        if key in self.known:
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return self.fn(*args)
        out = self.fn(*args)
        self.known.add(key)
        return out


def compile_unet_and_vae(unet_fn: Callable, encode_fn: Callable, opts: CompileConfig,
                         label: str) -> Tuple[Callable, Callable]:
    """``(unet_fn, encode_fn)`` compiled as ``opts`` says (the encode only with ``opts.vae``), with ``fullgraph=True,
    dynamic=False``; inductor's on-disk cache is set up first."""
    import torch

    from threestudio.models.diffusion.cache import configure_compile_cache
    from threestudio.utils.log import info

    cache = configure_compile_cache(opts.cache_dir)
    info(f"Compiling the {label} UNet{' and VAE encoder' if opts.vae else ''} with torch.compile "
         f"(backend={opts.backend}, mode={opts.mode}) on first use; inductor cache: {cache}")
    kw: Dict[str, Any] = dict(fullgraph=True, dynamic=False, backend=opts.backend)
    if opts.backend == "inductor":
        kw["mode"] = opts.mode
    unet_c = torch.compile(unet_fn, **kw)
    encode_c = torch.compile(encode_fn, **kw) if opts.vae else encode_fn
    if opts.skip_guards:
        unet_c = SkipKnownGuards(unet_c)
        if opts.vae:
            encode_c = SkipKnownGuards(encode_c)
    return unet_c, encode_c
