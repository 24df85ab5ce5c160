"""The low-overhead Triton launcher (threestudio.ops.triton_launch): which launches go direct, what they pass, and
when it falls back to Triton's dispatcher. A fake JIT function records the calls (no GPU, no compiler); the GPU test
in tests/mesh/test_rasterize.py holds the real kernels' outputs equal with the fast path on and off."""

from __future__ import annotations

import pytest
import torch

from threestudio.ops import triton_launch as TL


class _Compiled:
    def __init__(self, log, reject=False):
        self.log, self.reject = log, reject
        self.function, self.packed_metadata = "fn-handle", "meta"

    def run(self, *a):
        if self.reject:
            raise TypeError("function takes exactly 12 arguments (14 given)")
        self.log.append(("direct",) + a)


class _Jit:
    """Stands for a @triton.jit function kern(x_ptr, n, scale, BLOCK: constexpr, FLAG: constexpr)."""

    arg_names = ["x_ptr", "n", "scale", "BLOCK", "FLAG"]

    def __init__(self, reject=False):
        self.log, self.reject = [], reject

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.log.append(("dispatch", grid, args, tuple(sorted(kw.items()))))
            return _Compiled(self.log, self.reject)
        return launch


@pytest.fixture
def gpu_like(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(TL, "_current_stream", lambda dev: 1234)
    monkeypatch.setattr(TL, "_hooks_installed", lambda: False)
    monkeypatch.setattr(TL, "_device", lambda: 0)


def test_second_launch_goes_direct_with_constexprs_in_signature_order(gpu_like):
    jit = _Jit()
    k = TL.FastKernel(jit)
    x = torch.zeros(64)
    k[(7,)](x, 100, 0.5, FLAG=True, BLOCK=128, num_warps=4)
    k[(9, 2)](x, 100, 0.25, FLAG=True, BLOCK=128, num_warps=4)
    assert [e[0] for e in jit.log] == ["dispatch", "direct"]
    # grid padded to 3, the current stream, the compiled handles, no launch metadata or hooks, args, constexprs
    assert jit.log[1] == ("direct", 9, 2, 1, 1234, "fn-handle", "meta", None, None, None, x, 100, 0.25, 128, True)
    assert k.stats == {"direct": 1, "dispatched": 1}


@pytest.mark.parametrize("change", ["int_is_one", "int_multiple_of_16", "int_wide", "dtype", "misaligned",
                                    "constexpr", "num_warps"])
def test_a_new_specialization_is_dispatched_again(gpu_like, change):
    jit = _Jit()
    k = TL.FastKernel(jit)
    x = torch.zeros(64)
    args, kw = [x, 100, 0.5], dict(BLOCK=128, FLAG=True, num_warps=4)
    k[(1,)](*args, **kw)
    if change == "int_is_one":
        args[1] = 1
    elif change == "int_multiple_of_16":
        args[1] = 96
    elif change == "int_wide":
        args[1] = 2 ** 40 + 100
    elif change == "dtype":
        args[0] = torch.zeros(64, dtype=torch.float64)
    elif change == "misaligned":
        args[0] = x[1:]
    elif change == "constexpr":
        kw["BLOCK"] = 256
    else:
        kw["num_warps"] = 8
    k[(1,)](*args, **kw)
    assert [e[0] for e in jit.log] == ["dispatch", "dispatch"]
    k[(1,)](*args, **kw)  # and then that one goes direct
    assert [e[0] for e in jit.log] == ["dispatch", "dispatch", "direct"]


def test_a_launcher_that_rejects_the_call_falls_back_for_good(gpu_like):
    jit = _Jit(reject=True)
    k = TL.FastKernel(jit)
    x = torch.zeros(64)
    for _ in range(3):
        k[(1,)](x, 100, 0.5, BLOCK=128, FLAG=False)
    assert [e[0] for e in jit.log] == ["dispatch"] * 3  # each call launched exactly once
    assert k.broken and k.stats == {"direct": 0, "dispatched": 3}


def test_dispatch_only_when_interpreted_hooked_or_a_constexpr_is_defaulted(gpu_like, monkeypatch):
    x = torch.zeros(64)
    jit = _Jit()
    k = TL.FastKernel(jit)
    k[(1,)](x, 100, 0.5, BLOCK=128)  # FLAG left to a default: not the fast path's contract
    k[(1,)](x, 100, 0.5, BLOCK=128)
    assert k.broken and [e[0] for e in jit.log] == ["dispatch", "dispatch"]
    for setup in (lambda: monkeypatch.setenv("TRITON_INTERPRET", "1"),
                  lambda: monkeypatch.setattr(TL, "_hooks_installed", lambda: True)):
        with monkeypatch.context() as m:
            setup()
            jit = _Jit()
            k = TL.FastKernel(jit)
            for _ in range(2):
                k[(1,)](x, 100, 0.5, BLOCK=128, FLAG=True)
            assert [e[0] for e in jit.log] == ["dispatch", "dispatch"]


def test_arg_key_separates_what_triton_specializes_on():
    x = torch.zeros(64)
    keys = {TL.arg_key(a) for a in (x, x[1:], x.double(), 1, 2, 16, 2 ** 31, 2 ** 63, True, False, 0.5, None)}
    assert len(keys) == 12  # all different
    assert TL.arg_key(3) == TL.arg_key(5) and TL.arg_key(32) == TL.arg_key(48) and TL.arg_key(0.5) == TL.arg_key(2.0)


def test_rasterizer_kernels_take_their_constexprs_last_and_by_keyword():
    """The fast path appends the constexprs after the positional arguments: every kernel launched through it must
    declare them after its runtime parameters."""
    pytest.importorskip("triton")
    import inspect

    from threestudio.ops.rasterize import triton_backend as TB

    src = inspect.getsource(TB)
    names = sorted(set(n for n in dir(TB) if n.endswith("_kernel") and f"_fast({n})" in src))
    assert len(names) == 10, names
    for n in names:
        params = inspect.signature(getattr(TB, n).fn).parameters.values()
        kinds = [p.annotation is not inspect.Parameter.empty for p in params]  # constexprs are annotated
        assert kinds == sorted(kinds), (n, kinds)


def test_hook_detection_reads_an_empty_hook_chain_as_no_hook():
    """Triton 3.6 holds a HookChain in knobs.runtime.launch_enter_hook even when nothing is hooked (seen on the GPU
    machine: the fast path never went direct while this read it as a hook)."""

    class Chain:
        def __init__(self, calls):
            self.calls = calls

    assert not TL._hook_set(None) and not TL._hook_set(Chain([]))
    assert TL._hook_set(Chain([print])) and TL._hook_set(print)
    pytest.importorskip("triton")
    assert TL._hooks_installed() is False  # nothing hooked in this process


def test_the_rasterizer_switch_picks_the_dispatcher_or_the_fast_launcher():
    """fast_launch off (THREESTUDIO_TRITON_FAST_LAUNCH=0; on by default): the JIT function itself, no wrapper on
    the launch path; on: one FastKernel per kernel."""
    pytest.importorskip("triton")
    import dataclasses

    from threestudio.ops.rasterize import triton_backend as TB

    assert TB.DEFAULT_CONFIG.fast_launch is TL.ENABLED
    try:
        TB.set_config(dataclasses.replace(TB.DEFAULT_CONFIG, fast_launch=False))
        assert TB._fast(TB._resolve_kernel) is TB._resolve_kernel
        TB.set_config(dataclasses.replace(TB.DEFAULT_CONFIG, fast_launch=True))
        fk = TB._fast(TB._resolve_kernel)
        assert isinstance(fk, TL.FastKernel) and fk.fn is TB._resolve_kernel and TB._fast(TB._resolve_kernel) is fk
    finally:
        TB.set_config(TB.DEFAULT_CONFIG)
