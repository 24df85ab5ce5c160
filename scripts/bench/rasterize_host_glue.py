#!/usr/bin/env python
"""The host-side work of the Triton rasterizer's op sequence, measured on the CPU with its kernel launches stubbed.

Below about 300k triangles a rasterize + interpolate + antialias forward + backward is bound by the host (see
docs/perf/rasterize.md): the GPU waits for Python, the autograd engine, ATen allocations and fills, and Triton's
launcher. This script isolates everything but the launches: the Triton backend's autograd functions run on small
CPU tensors, each ``kernel[grid](...)`` replaced by a counter, so no GPU and no Triton interpreter are needed. It
reports microseconds per call (median of ``--rounds`` rounds) for each op and the whole fwd+bwd, a no-op autograd
function's forward+backward on the same machine for scale, and what one fwd+bwd issues: kernel launches, ATen ops
by name, autograd nodes. A CPU proxy for the host cost on the GPU machine (whose host runs the same Python several
times slower); compare figures from one run only.

    python scripts/bench/rasterize_host_glue.py [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from threestudio.ops import rasterize as R  # noqa: E402


class _StubLaunch:
    """Stands for a compiled Triton kernel: ``stub[grid](*args, **meta)`` only counts."""

    def __init__(self, counter: Dict[str, int], name: str) -> None:
        self.counter, self.name = counter, name

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        def launch(*args: Any, **meta: Any) -> None:
            self.counter[self.name] = self.counter.get(self.name, 0) + 1
        return launch


@contextlib.contextmanager
def stubbed_launches(counter: Dict[str, int]) -> Iterator[Any]:
    """The Triton backend with every kernel launch replaced by a count in ``counter`` (restored on exit)."""
    from threestudio.ops.rasterize import triton_backend as TB

    saved = TB._fast, TB._grid_programs
    TB._fast = lambda kernel: _StubLaunch(counter, getattr(kernel, "__name__", None) or kernel.fn.__name__)
    TB._grid_programs = lambda device: 4
    try:
        yield TB
    finally:
        TB._fast, TB._grid_programs = saved


class NoOp(torch.autograd.Function):
    """An autograd function that does nothing: the fixed cost of one autograd node, for scale."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, gx):  # type: ignore[override]
        return gx


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        name = str(func.overloadpacket.__name__)
        self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _time_us(fn: Callable[[], Any], n: int, rounds: int) -> float:
    for _ in range(max(1, n // 10)):
        fn()
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        per.append((time.perf_counter() - t0) * 1e6 / n)
    return statistics.median(per)


def _graph_nodes(t: torch.Tensor) -> int:
    seen, stack = set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(nxt for nxt, _ in node.next_functions)
    return len(seen)


def measure(n: int = 300, rounds: int = 5, batch: int = 4, res: int = 16) -> Dict[str, Any]:
    """Host microseconds and issued work of one fwd+bwd (and of each op) with the launches stubbed."""
    g = torch.Generator().manual_seed(0)
    V, T = 642, 1280
    pos = torch.randn(batch, V, 4, generator=g)
    pos[..., 3] = 2.0
    pos.requires_grad_(True)
    tri = torch.randint(0, V, (T, 3), generator=g, dtype=torch.int32)
    col = torch.rand(V, 3, generator=g).requires_grad_(True)
    grad = torch.randn(batch, res, res, 3, generator=g)
    launches: Dict[str, int] = {}
    with stubbed_launches(launches) as TB:
        def forward():
            rast, _ = TB.rasterize(pos, tri, res, res, True)
            c, _ = TB.interpolate(col, rast, tri)
            return TB.antialias(c, rast, pos, tri, TB.edge_opposites(tri))

        def fwd_bwd():
            return torch.autograd.grad(forward(), [pos, col], grad)

        def fwd_bwd_api():  # the public ops, as the bench and the mesh renderer call them
            r, _ = R.rasterize(pos, tri, (res, res), backend="triton")
            c, _ = R.interpolate(col, r, tri, backend="triton")
            return torch.autograd.grad(R.antialias(c, r, pos, tri, backend="triton"), [pos, col], grad)

        rast, _ = TB.rasterize(pos, tri, res, res, True)
        c, _ = TB.interpolate(col, rast, tri)
        opp = TB.edge_opposites(tri)
        out = TB.antialias(c, rast, pos, tri, opp)
        us = {
            "rasterize": _time_us(lambda: TB.rasterize(pos, tri, res, res, True), n, rounds),
            "interpolate": _time_us(lambda: TB.interpolate(col, rast, tri), n, rounds),
            "topology": _time_us(lambda: TB.edge_opposites(tri), n, rounds),
            "antialias": _time_us(lambda: TB.antialias(c, rast, pos, tri, opp), n, rounds),
            "fwd": _time_us(forward, n, rounds),
            "fwd_bwd": _time_us(fwd_bwd, n, rounds),
        }
        # the public API checks its arguments and resolves the backend; on CPU tensors it takes the triton backend
        # only under TRITON_INTERPRET=1 (the launches stay stubbed)
        saved_env = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            us["fwd_bwd_public_api"] = _time_us(fwd_bwd_api, n, rounds)
        finally:
            if saved_env is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = saved_env
        nodes = _graph_nodes(forward())
        launches.clear()
        with _CountOps() as ops:
            fwd_bwd()
        issued = {"launches": sum(launches.values()), "launches_by_kernel": dict(sorted(launches.items())),
                  "aten_ops": sum(ops.ops.values()), "aten_ops_by_name": dict(sorted(ops.ops.items())),
                  "autograd_nodes": nodes}

    x = torch.randn(4, requires_grad=True)
    ones = torch.ones(4)
    us["noop_autograd_fwd_bwd"] = _time_us(lambda: torch.autograd.grad(NoOp.apply(x), [x], ones), n, rounds)
    return {"us": us, "issued": issued, "torch": torch.__version__, "batch": batch, "res": res,
            "triangles": T, "n": n, "rounds": rounds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="calls per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    r = measure(a.n, a.rounds)
    print("host microseconds per call (launches stubbed, CPU tensors; median of rounds):")
    for k, v in r["us"].items():
        print(f"  {k:24s} {v:8.1f}")
    i = r["issued"]
    print(f"one fwd+bwd issues {i['launches']} kernel launches, {i['aten_ops']} ATen ops, "
          f"{i['autograd_nodes']} autograd nodes")
    print("  ATen ops:", i["aten_ops_by_name"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
