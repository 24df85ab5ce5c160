#!/usr/bin/env python
"""Pre-generate the tetrahedral grids used by ``tetrahedra-sdf-grid`` into this folder (``<R>_tets.npz``).

Not needed for a run: a missing grid is generated on first use (a second or less) and cached here. No Quartet, no
download: the grids are cube lattices split into tetrahedra (:mod:`threestudio.ops.tetrahedra`).

    python load/tets/generate_tets.py            # 32, 64, 128
    python load/tets/generate_tets.py 96 160
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from threestudio.ops.tetrahedra import load_tet_grid  # noqa: E402

if __name__ == "__main__":
    for res in [int(a) for a in sys.argv[1:]] or [32, 64, 128]:
        v, t = load_tet_grid(res, os.path.dirname(os.path.abspath(__file__)))
        print(f"{res}: {v.shape[0]} vertices, {t.shape[0]} tetrahedra")
