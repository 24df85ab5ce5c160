"""Low-overhead launches of ``@triton.jit`` kernels from eager code.

``kernel[grid](*args, **constexprs)`` goes through Triton's JIT dispatcher on every call: it binds and specializes
every argument, computes the cache key, checks globals and builds launch metadata before the driver launch. On a
slow host that is tens of microseconds a launch, which is the whole budget of a small rasterization.

:class:`FastKernel` wraps a JIT function. The first launch for a given *specialization* goes through the dispatcher
(which compiles, caches and launches); the compiled kernel's launcher is kept under a key that is at least as fine as
Triton's own specialization (tensor dtypes and 16-byte alignment, integer width and the ``== 1`` / ``% 16 == 0``
properties, constexpr values, launch options, the device), and later launches with that key call it directly.

The direct path is skipped (the dispatcher is used) under ``TRITON_INTERPRET=1``, while a Triton launch hook is
installed (profilers), and for good after the compiled launcher rejects a call (another Triton version with another
launcher signature): it can be slower, never different.

Callers use it when ``ENABLED`` (the default; ``THREESTUDIO_TRITON_FAST_LAUNCH=0`` turns it off, and the rasterizer
then launches through Triton's dispatcher). On an H100 machine (Triton 3.6, 2026-12-06) a direct launch took 9.9 us
against the dispatcher's 14.4 us (and 18.8 against 27.8 us on a slower host); the GPU tests that hold the rasterizer's
outputs equal both ways (tests/mesh/test_rasterize.py) pass there. ``bench_rasterize.py --host`` also times the
compiled launcher alone (5.3 us there: the floor of a Triton launch from Python).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Sequence, Tuple

import torch

_INT32 = (-(2 ** 31), 2 ** 31 - 1)
ENABLED = os.environ.get("THREESTUDIO_TRITON_FAST_LAUNCH", "1") != "0"  # the default of the callers' switches


def _int_key(a: int) -> Tuple:
    return ("i", a == 1, a % 16 == 0, _INT32[0] <= a <= _INT32[1], a >= 2 ** 63)


_INT_KEYS: Dict[int, Tuple] = {}  # the keys of the sizes seen (a few per op and mesh), cleared when it grows large


_Tensor = torch.Tensor


def arg_key(a: Any) -> Any:
    """The part of an argument Triton specializes a kernel on (a superset of it)."""
    t = type(a)
    if t is _Tensor:  # the common cases first, by exact type (bool is an int subclass: checked apart)
        return (a.dtype, not a.data_ptr() & 15)
    if t is int:
        k = _INT_KEYS.get(a)
        if k is None:
            if len(_INT_KEYS) > 4096:
                _INT_KEYS.clear()
            k = _INT_KEYS[a] = _int_key(a)
        return k
    if t is float:
        return "f"
    if isinstance(a, torch.Tensor):
        return (a.dtype, not a.data_ptr() & 15)
    if t is bool:
        return ("b", a)
    if isinstance(a, int):
        return _int_key(a)
    if isinstance(a, float):
        return "f"
    if a is None:
        return None
    return (type(a), a)  # anything else: by value (hashable, or the caller gets a TypeError from the key)


def _current_stream(device: int) -> int:
    return torch._C._cuda_getCurrentRawStream(device)


# the current device without torch.cuda.current_device()'s Python layer (CUDA is initialised: the arguments are on it)
_device: Callable[[], int] = getattr(torch._C, "_cuda_getDevice", lambda: 0)


def _hook_set(hook: Any) -> bool:
    # Triton >= 3.6 keeps a HookChain here at all times (``calls`` empty when nothing is hooked); older ones None
    return hook is not None and bool(getattr(hook, "calls", True))


_RUNTIME_KNOBS: list = []  # triton.knobs.runtime, looked up once (False: older Triton without knobs)


def _hooks_installed() -> bool:
    if not _RUNTIME_KNOBS:
        try:
            from triton import knobs

            _RUNTIME_KNOBS.append(knobs.runtime)
        except Exception:
            _RUNTIME_KNOBS.append(False)
    rt = _RUNTIME_KNOBS[0]
    if rt is False:  # keep the dispatcher
        return True
    return _hook_set(rt.launch_enter_hook) or _hook_set(rt.launch_exit_hook)


class FastKernel:
    """``FastKernel(jit_fn)[grid](*args, num_warps=4, **constexprs)``: launch ``jit_fn`` like ``jit_fn[grid](...)``.

    The positional ``args`` are the kernel's runtime parameters in order; every constexpr parameter after them is
    given by keyword (no defaults). ``stats`` counts ``direct`` and ``dispatched`` launches (tests, benchmarks).
    """

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.names: Sequence[str] = tuple(fn.arg_names)
        self.cache: Dict[Tuple, Tuple] = {}
        self.broken = False
        self.interpreted = os.environ.get("TRITON_INTERPRET") == "1"  # as Triton, decided when the kernel is made
        self.stats = {"direct": 0, "dispatched": 0}

    def __getitem__(self, grid: Tuple[int, ...]) -> Callable[..., None]:
        return lambda *args, **kw: self.launch(grid, args, kw)

    def _dispatch(self, grid: Tuple[int, ...], args: Tuple, kw: Dict[str, Any]) -> Any:
        self.stats["dispatched"] += 1
        return self.fn[grid](*args, **kw)

    def launch(self, grid: Tuple[int, ...], args: Tuple, kw: Dict[str, Any]) -> None:
        if self.broken or self.interpreted or _hooks_installed():
            self._dispatch(grid, args, kw)
            return
        dev = _device()
        # the keywords in the caller's order: a call site that orders them differently only adds a cache entry
        key = (dev, tuple(kw.items()), tuple(map(arg_key, args)))
        entry = self.cache.get(key)
        if entry is None:
            compiled = self._dispatch(grid, args, kw)
            rest = self.names[len(args):]
            if any(n not in kw for n in rest):  # a parameter left to its default: not this fast path's contract
                self.broken = True
                return
            tail = tuple(kw[n] for n in rest)  # the constexprs, in signature order
            self.cache[key] = (compiled.run, compiled.function, compiled.packed_metadata, tail)
            return
        run, function, metadata, tail = entry
        g0 = grid[0]
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        try:
            run(g0, g1, g2, _current_stream(dev), function, metadata, None, None, None, *args, *tail)
        except TypeError:  # another launcher signature: dispatch from now on
            self.broken = True
            self.cache.clear()
            self._dispatch(grid, args, kw)
            return
        self.stats["direct"] += 1
