from fractions import Fraction

import pytest
import torch

from threestudio.ops.uv_bake import dilate_texture, interpolate_texels, rasterize_uv, texel_centers

BITS = 8
S = 1 << BITS


def brute_force(uv, faces, H, W):
    """Per texel, per face, with exact rational arithmetic on the snapped corners (same snapping as the op).

    Inside = all three barycentrics >= 0; a zero barycentric (texel centre on an edge) counts only if that edge,
    directed so that the interior is on its positive side, points down (dy > 0) or left (dy == 0, dx < 0), in
    (x right, y down) texel coordinates. Overlaps: the highest face index wins.
    """
    snapped = [(round(float(u) * W * S), round((1.0 - float(v)) * H * S)) for u, v in uv.double().tolist()]
    fid = [[-1] * W for _ in range(H)]
    bary = [[(0.0, 0.0, 0.0)] * W for _ in range(H)]
    for i in range(H):
        for j in range(W):
            p = (j * S + S // 2, i * S + S // 2)
            for k, face in enumerate(faces.tolist()):
                a, b, c = (snapped[t] for t in face)
                den = Fraction((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))
                if den == 0:
                    continue
                # barycentric of corner a = area(p, b, c) / area(a, b, c), etc.
                la = Fraction((b[0] - p[0]) * (c[1] - p[1]) - (b[1] - p[1]) * (c[0] - p[0])) / den
                lb = Fraction((c[0] - p[0]) * (a[1] - p[1]) - (c[1] - p[1]) * (a[0] - p[0])) / den
                lc = 1 - la - lb
                ok = True
                # the edge opposite each corner, with the interior on its positive side
                for lam, (q0, q1) in ((la, (b, c)), (lb, (c, a)), (lc, (a, b))):
                    if lam < 0:
                        ok = False
                    elif lam == 0:
                        dx, dy = q1[0] - q0[0], q1[1] - q0[1]
                        if den < 0:
                            dx, dy = -dx, -dy
                        if not (dy > 0 or (dy == 0 and dx < 0)):
                            ok = False
                if ok:
                    fid[i][j] = k  # later (higher) faces overwrite: the highest index wins
                    bary[i][j] = (float(la), float(lb), float(lc))
    return torch.tensor(fid), torch.tensor(bary)


@pytest.mark.parametrize("seed,lattice", [(0, False), (1, False), (2, False), (3, True), (4, True)])
def test_matches_brute_force_on_random_triangles(seed, lattice):
    g = torch.Generator().manual_seed(seed)
    H, W = 23, 31
    uv = torch.rand(18, 2, generator=g) * 1.2 - 0.1  # some corners outside [0, 1]: clipped
    if lattice:  # corners on texel centres and texel corners: many centres lie exactly on edges (ties)
        uv = torch.stack([torch.randint(-2, 2 * W + 2, (18,), generator=g) / (2.0 * W),
                          torch.randint(-2, 2 * H + 2, (18,), generator=g) / (2.0 * H)], dim=-1)
    faces = torch.randperm(18, generator=g).view(6, 3)
    fid, bary = rasterize_uv(uv, faces, H, W)
    ref_fid, ref_bary = brute_force(uv, faces, H, W)
    assert fid.shape == (H, W) and bary.shape == (H, W, 3)
    assert (fid >= 0).sum() > 20  # the test covers something
    assert torch.equal(fid, ref_fid)
    assert torch.allclose(bary, ref_bary.float(), atol=1e-6)
    # tiny chunks give the same answer (chunk boundaries inside a triangle's bounding box)
    fid2, bary2 = rasterize_uv(uv, faces, H, W, chunk_texels=7)
    assert torch.equal(fid2, fid) and torch.equal(bary2, bary)


def test_ties_on_shared_edges_cover_each_texel_exactly_once():
    """A tiling whose vertices sit on texel centres (so many centres lie exactly on edges and on vertices): every
    texel inside the tiled region belongs to exactly one triangle, whatever the winding of each triangle."""
    H = W = 16
    n = 4  # 4 x 4 quads, corners on texel centres 0.5, 4.5, 8.5, 12.5, 15.5 (texel units)
    ticks = [0.5, 4.5, 8.5, 12.5, 15.5]
    uv, idx = [], {}
    for r, y in enumerate(ticks):
        for c, x in enumerate(ticks):
            idx[r, c] = len(uv)
            uv.append((x / W, 1.0 - y / H))
    faces = []
    for r in range(n):
        for c in range(n):
            a, b, d, e = idx[r, c], idx[r, c + 1], idx[r + 1, c], idx[r + 1, c + 1]
            if (r + c) % 2:  # alternate the diagonal
                tris = [(a, b, e), (a, e, d)]
            else:
                tris = [(a, b, d), (b, e, d)]
            if r % 2:  # flip the winding of some triangles
                tris = [(t[0], t[2], t[1]) for t in tris]
            faces += tris
    uv, faces = torch.tensor(uv), torch.tensor(faces)
    count = torch.zeros(H, W, dtype=torch.long)
    for k in range(faces.shape[0]):
        fid, _ = rasterize_uv(uv, faces[k:k + 1], H, W)
        count += (fid >= 0).long()
    # texel centres strictly inside the tiled region (rows/cols 1..14) are covered exactly once; those on the
    # region's outer border (row/col 0 and 15) lie on an edge with no neighbour: owned on one side only
    assert int(count.max()) == 1
    assert bool((count[1:15, 1:15] == 1).all())
    # rasterizing them together gives the same partition with valid barycentrics
    fid, bary = rasterize_uv(uv, faces, H, W)
    assert torch.equal(fid >= 0, count == 1)
    inside = fid >= 0
    assert torch.allclose(bary.sum(-1)[inside], torch.ones(int(inside.sum())))
    assert bool((bary[inside] >= 0).all())


def test_row_zero_is_v_one_and_barycentrics_reproduce_texel_centres():
    H, W = 8, 12
    # a triangle covering the top-left corner region: u < 0.5, v > 0.5 (upper-left half of that quarter)
    uv = torch.tensor([[0.0, 1.0], [0.5, 1.0], [0.0, 0.5]])
    fid, bary = rasterize_uv(uv, torch.tensor([[0, 1, 2]]), H, W)
    covered = fid >= 0
    assert bool(covered[:H // 2, :W // 2].any()) and not bool(covered[H // 2:].any())
    assert not bool(covered[:, W // 2:].any())
    assert bool(covered[0, 0]) and not bool(covered[H // 2 - 1, W // 2 - 1])
    vals, flat = interpolate_texels(uv.double(), torch.tensor([[0, 1, 2]]), fid, bary)
    centres = texel_centers(H, W).view(-1, 2)[flat]
    assert torch.allclose(vals.float(), centres, atol=1.0 / (S * min(H, W)))
    # a big layout: interpolated UVs land on the texel centres to within the fixed-point precision
    g = torch.Generator().manual_seed(3)
    uv2 = torch.rand(300, 2, generator=g)
    faces2 = torch.randint(0, 300, (100, 3), generator=g)
    fid2, bary2 = rasterize_uv(uv2, faces2, 64, 64, chunk_texels=1000)
    vals2, flat2 = interpolate_texels(uv2.double(), faces2, fid2, bary2)
    assert flat2.numel() > 1000
    assert (vals2.float() - texel_centers(64, 64).view(-1, 2)[flat2]).abs().max() < 1.0 / (S * 64) * 2


def test_degenerate_and_empty_inputs():
    uv = torch.tensor([[0.1, 0.1], [0.9, 0.9], [0.5, 0.5]])  # collinear
    fid, bary = rasterize_uv(uv, torch.tensor([[0, 1, 2]]), 10)
    assert bool((fid == -1).all()) and bool((bary == 0).all())
    fid, _ = rasterize_uv(uv, torch.zeros(0, 3, dtype=torch.long), 4, 5)
    assert fid.shape == (4, 5) and bool((fid == -1).all())
    with pytest.raises(ValueError, match=r"t_tex_idx has indices outside \[0, 3\)"):
        rasterize_uv(uv, torch.tensor([[0, 1, 3]]), 10)
    with pytest.raises(ValueError, match=r"uv must have shape \[T, 2\]"):
        rasterize_uv(uv[:, :1], torch.tensor([[0, 1, 2]]), 10)


def test_dilate_texture_nearest_within_padding():
    H, W = 7, 9
    tex = torch.full((H, W, 3), 0.5)
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[3, 1] = True
    mask[3, 7] = True
    tex[3, 1] = torch.tensor([1.0, 0.0, 0.0])
    tex[3, 7] = torch.tensor([0.0, 0.0, 1.0])
    out = dilate_texture(tex, mask, padding=2)
    red, blue, zero = torch.tensor([1.0, 0, 0]), torch.tensor([0, 0, 1.0]), torch.zeros(3)
    assert torch.equal(out[3, 1], red) and torch.equal(out[3, 7], blue)
    assert torch.equal(out[3, 3], red)  # distance 2 from the red texel
    assert torch.equal(out[1, 1], red) and torch.equal(out[3, 0], red)
    assert torch.equal(out[3, 5], blue) and torch.equal(out[4, 8], blue)
    assert torch.equal(out[3, 4], zero)  # distance 3 from both: beyond the padding, and not the 0.5 input
    assert torch.equal(out[0, 0], zero)  # sqrt(10) > 2
    assert torch.equal(out[1, 2], zero)  # sqrt(5) > 2
    assert torch.equal(out[2, 2], red)  # sqrt(2) <= 2
    full = dilate_texture(tex, mask, padding=-1)
    assert torch.equal(full[3, 3], red) and torch.equal(full[0, 8], blue) and torch.equal(full[6, 0], red)
    none = dilate_texture(tex, mask, padding=0)
    assert torch.equal(none[3, 2], zero) and torch.equal(none[3, 1], red)
