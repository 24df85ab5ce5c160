"""NADA's adaptive layer selection on GET3D: one "layer" per w copy (9 texture + 22 geometry = 31 by default).

Layer index space (:func:`layer_modules`), in the order of ``cat([scores_tex, scores_geo])``:

* texture i < #blocks: ``b<res>.totex`` of block i; then ``mlp_synthesis_tex.layers[j]``;
* geometry: per block ``conv0`` (not in b4), ``conv1``, ``togeo``; then ``layers[j]`` of the SDF and deformation
  MLPs together (and the FlexiCubes weight MLP when present).

The mapping networks and the final ``to_rgb`` are never trained.

:func:`layer_scores` = mean |w_new - w_init| over latent dim and batch per w copy; :func:`select_layers` takes the
top-k; :func:`apply_selection` sets ``requires_grad`` so that only the selected modules get gradients. With
gradients set to None for the others (``zero_grad(set_to_none=True)``), Adam skips them entirely: a layer that was
selected earlier does not keep moving on its old momentum (the YAIverse code zeroes the gradients instead, so such
layers drift).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn


def layer_modules(generator) -> Tuple[List[List[nn.Module]], List[List[nn.Module]]]:
    """(texture layers, geometry layers): for each w copy, the modules it drives."""
    g = generator.synthesis.generator
    tex: List[List[nn.Module]] = []
    geo: List[List[nn.Module]] = []
    for blk in g.tri_plane_synthesis.blocks():
        tex.append([blk.totex])
        if hasattr(blk, "conv0"):
            geo.append([blk.conv0])
        geo.append([blk.conv1])
        geo.append([blk.togeo])
    for layer in g.mlp_synthesis_tex.layers:
        tex.append([layer])
    mlps = [g.mlp_synthesis_sdf, g.mlp_synthesis_def] + ([g.mlp_synthesis_weight]
                                                         if hasattr(g, "mlp_synthesis_weight") else [])
    for j in range(g.mlp_synthesis_sdf.num_ws):
        geo.append([m.layers[j] for m in mlps])
    assert len(tex) == generator.num_ws_tex and len(geo) == generator.num_ws_geo
    return tex, geo


def layer_scores(ws_init: torch.Tensor, ws_new: torch.Tensor) -> torch.Tensor:
    """[B, L, D] before/after -> [L] mean absolute change per w copy."""
    return (ws_new.detach() - ws_init.detach()).abs().mean(dim=(0, 2))


def select_layers(scores_tex: torch.Tensor, scores_geo: torch.Tensor, k: int) -> List[int]:
    """Indices (into the concatenated tex + geo layer list) of the ``k`` largest scores (ties: lower index)."""
    s = torch.cat([scores_tex, scores_geo]).double().cpu()
    n = s.numel()
    k = max(0, min(int(k), n))
    # stable ordering: by score descending, then by index ascending
    order = sorted(range(n), key=lambda i: (-float(s[i]), i))
    return sorted(order[:k])


def synthesis_parameters(generator) -> List[nn.Parameter]:
    """Every parameter that NADA may train (the triplane synthesis and the MLPs; not mapping, not to_rgb)."""
    return list(generator.synthesis.generator.parameters())


def apply_selection(generator, selected: Sequence[int]) -> List[nn.Parameter]:
    """Freeze the whole synthesis, unfreeze the modules of ``selected`` layers; return the trainable params."""
    tex, geo = layer_modules(generator)
    layers = tex + geo
    for p in generator.parameters():
        p.requires_grad_(False)
    out: List[nn.Parameter] = []
    for i in selected:
        for m in layers[i]:
            for p in m.parameters():
                p.requires_grad_(True)
                out.append(p)
    return out


def layer_names(generator) -> List[str]:
    """Readable names of the layers, in index order (for logs)."""
    names = {id(m): n for n, m in generator.named_modules()}
    tex, geo = layer_modules(generator)
    return ["tex:" + "+".join(names[id(m)].split("generator.", 1)[-1] for m in mods) for mods in tex] + \
           ["geo:" + "+".join(names[id(m)].split("generator.", 1)[-1] for m in mods) for mods in geo]
