"""Splatter images <-> attribute images: hand-computed values, per-attribute round trips within fp16 precision for
every preset, the image-space round trip, rotations, the view grid, and the OpenGL -> OpenCV flip of the renderer."""

import math

import pytest
import torch

from tests.zero1tog.conftest import load_ext

load_ext()
from custom.zero1tog import splatter as S  # noqa: E402

E16 = 2.0 ** -12  # largest fp16 rounding error of a value in [-1, 1] (half a unit in the last place at [0.5, 1))


def one_pixel(pos, opacity, scale, quat, rgb):
    v = list(pos) + [opacity] + list(scale) + list(quat) + list(rgb)
    return torch.tensor(v, dtype=torch.float32).reshape(1, 14, 1, 1)


def test_hand_computed_values_wonder3d():
    q90z = [math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]  # 90 deg about z: axis-angle (0, 0, pi/2)
    sp = one_pixel([0.35, -0.7, 0.0], 0.25, [math.exp(-4), math.exp(-6), 1e-5], q90z, [0.5, 1.0, 0.0])
    img = S.splatter_to_attribute_images(sp, "wonder3d")[:, 0, :, 0, 0]  # [5, 3]
    expect = torch.tensor([[0.5, -1.0, 0.0],  # pos / 0.7
                           [-0.5, -0.5, -0.5],  # opacity 0.25 -> 2 * 0.25 - 1, three times
                           [0.0, 0.5, 0.0],  # surfel: channel 0 unused, log s_x = -4 -> 0.5, log s_y = -6 -> 0
                           [0.0, 0.0, math.pi / 10],  # (pi / 2) / 5
                           [0.0, 1.0, -1.0]])
    assert torch.allclose(img, expect, atol=1e-6)
    back = S.attribute_images_to_splatter(img[:, None, :, None, None], "wonder3d")[0, :, 0, 0]
    assert torch.allclose(back[4:7], torch.tensor([math.exp(-4), math.exp(-6), math.exp(-10)]), rtol=1e-5)
    assert torch.allclose(back[7:11], torch.tensor(q90z), atol=1e-6)


def test_hand_computed_values_other_presets():
    sp = one_pixel([0.0, 0.0, 0.0], 1.0 / (1.0 + math.exp(2.5)), [math.exp(-4), math.exp(-6), math.exp(-8)],
                   [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    img = S.splatter_to_attribute_images(sp, "zero123pp-2dgs")[:, 0, :, 0, 0]
    assert torch.allclose(img[1], torch.zeros(3), atol=1e-6)  # logit -2.5 in (-14, 9) -> 0
    assert torch.allclose(img[2], torch.tensor([0.0, 0.5, 0.0]), atol=1e-6)
    img = S.splatter_to_attribute_images(sp, "zero123pp")[:, 0, :, 0, 0]
    assert torch.allclose(img[1], torch.full((3,), 2 * 0.0758582 - 1), atol=1e-6)  # linear opacity
    assert torch.allclose(img[2], torch.tensor([0.5, 0.0, -0.5]), atol=1e-6)  # three log-scales
    # a half turn (pi) exceeds the zero123pp rotation range (+-3) and is clipped there, as in that branch
    half = one_pixel([0, 0, 0], 0.5, [0.01] * 3, [0.0, 1.0, 0.0, 0.0], [0, 0, 0])
    assert S.splatter_to_attribute_images(half, "zero123pp")[3, 0, 0, 0, 0] == 1.0
    assert abs(S.splatter_to_attribute_images(half, "wonder3d")[3, 0, 0, 0, 0] - math.pi / 5) < 1e-6


def test_values_outside_the_ranges_are_clipped():
    sp = one_pixel([1.0, -2.0, 0.0], 0.5, [1.0, 1e-8, 1.0], [1, 0, 0, 0], [1.5, -0.5, 0.5])
    back = S.attribute_images_to_splatter(S.splatter_to_attribute_images(sp))[0, :, 0, 0]
    assert torch.allclose(back[0:3], torch.tensor([0.7, -0.7, 0.0]), atol=1e-6)
    assert torch.allclose(back[4:6], torch.tensor([math.exp(-2), math.exp(-10)]), rtol=1e-5)
    assert torch.allclose(back[11:14], torch.tensor([1.0, 0.0, 0.5]), atol=1e-6)


def random_splatter(mapping, V=6, H=8, W=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = S.get_mapping(mapping)
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    pos = (u(V, 3, H, W) * 2 - 1) * 0.69
    opacity = 0.001 + 0.998 * u(V, 1, H, W)
    lo, hi = m.log_scale_range
    scale = torch.exp(lo + 0.01 + (hi - lo - 0.02) * u(V, 3, H, W))
    if m.scale_mode == "surfel":
        scale[:, 2] = m.surfel_thickness
    quat = S.canonical_quaternion(torch.randn(V, 4, H, W, generator=g).movedim(1, -1)).movedim(-1, 1)
    if m.rotation_range[1] < math.pi:  # keep angles inside the range
        aa = S.quaternion_to_axis_angle(quat.movedim(1, -1))
        aa = aa * (0.95 * m.rotation_range[1] / aa.norm(dim=-1, keepdim=True).clamp_min(m.rotation_range[1]))
        quat = S.axis_angle_to_quaternion(aa).movedim(-1, 1)
    rgb = u(V, 3, H, W)
    return torch.cat([pos, opacity, scale, quat, rgb], 1)


@pytest.mark.parametrize("mapping", ["wonder3d", "zero123pp", "zero123pp-2dgs"])
def test_round_trip_per_attribute_within_fp16(mapping):
    m = S.get_mapping(mapping)
    sp = random_splatter(mapping)
    img = S.splatter_to_attribute_images(sp, m)
    assert img.shape == (5, 6, 3, 8, 8) and img.min() >= -1 and img.max() <= 1
    img16 = img.half().float()
    assert (img16 - img).abs().max() <= E16  # the premise of the bounds below
    back = S.attribute_images_to_splatter(img16, m)
    C = S.CHANNELS
    err = lambda k: (back[:, C[k]] - sp[:, C[k]]).abs().max().item()  # noqa: E731
    half_width = lambda r: 0.5 * (r[1] - r[0])  # noqa: E731
    tiny = 1e-6  # float32 arithmetic
    assert err("pos") <= E16 * half_width(m.pos_range) + tiny
    assert err("rgb") <= E16 * half_width(m.rgb_range) + tiny
    if m.opacity == "linear":
        assert err("opacity") <= E16 * half_width(m.opacity_range) + tiny
    else:  # d sigmoid <= 1/4 d logit
        assert err("opacity") <= 0.25 * E16 * half_width(m.opacity_range) + tiny
    carried = [0, 1] if m.scale_mode == "surfel" else [0, 1, 2]
    rel = (back[:, 4:7][:, carried] / sp[:, 4:7][:, carried] - 1).abs().max().item()
    assert rel <= math.expm1(E16 * half_width(m.log_scale_range)) + 1e-5
    if m.scale_mode == "surfel":
        assert torch.all(back[:, 6] == m.surfel_thickness)
    # the axis-angle -> quaternion map is 1/2-Lipschitz: |dq| <= |d aa| / 2 <= sqrt(3) e w / 2
    dq = (back[:, C["rotation"]] - sp[:, C["rotation"]]).norm(dim=1).max().item()
    assert dq <= 0.5 * math.sqrt(3) * E16 * half_width(m.rotation_range) + tiny
    # and without fp16 the round trip is exact to float32 rounding
    exact = S.attribute_images_to_splatter(img, m)
    assert torch.allclose(exact[:, :4], sp[:, :4], atol=2e-6)
    assert torch.allclose(exact[:, 7:], sp[:, 7:], atol=2e-6)


@pytest.mark.parametrize("mapping", ["wonder3d", "zero123pp", "zero123pp-2dgs"])
def test_image_space_round_trip(mapping):
    m = S.get_mapping(mapping)
    g = torch.Generator().manual_seed(1)
    img = torch.rand(5, 6, 3, 4, 4, generator=g) * 1.9 - 0.95
    lim = (m.rotation_range[1] if m.rotation_range[1] < math.pi else math.pi) / m.rotation_range[1]
    img[3] = img[3] * (0.9 * lim / img[3].norm(dim=1, keepdim=True).clamp_min(lim))  # angles the encoder keeps
    again = S.splatter_to_attribute_images(S.attribute_images_to_splatter(img, m), m)
    expect = img.clone()
    expect[1] = img[1].mean(1, keepdim=True).expand_as(img[1])  # opacity: the three channels' mean
    if m.scale_mode == "surfel":
        expect[2, :, 0] = 0.0
    assert torch.allclose(again, expect, atol=2e-5)


def test_rotation_conversions():
    assert torch.allclose(S.quaternion_to_axis_angle(torch.tensor([0.0, 1.0, 0.0, 0.0])),
                          torch.tensor([math.pi, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(S.quaternion_to_axis_angle(torch.tensor([-1.0, 0.0, 0.0, 0.0])), torch.zeros(3))
    tiny = torch.tensor([1e-6, -2e-6, 3e-6])
    assert torch.allclose(S.quaternion_to_axis_angle(S.axis_angle_to_quaternion(tiny)), tiny, atol=1e-12)
    aa = torch.zeros(3, requires_grad=True)
    S.axis_angle_to_quaternion(aa).sum().backward()
    assert torch.isfinite(aa.grad).all() and torch.allclose(aa.grad, torch.full((3,), 0.5))
    n = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 0.6, 0.8]])
    from threestudio.ops.splatting import quat_to_rotmat

    R = quat_to_rotmat(S.rotation_to_normal_quaternion(n))
    assert torch.allclose(R[:, :, 2], n, atol=1e-6)


def test_tile_views_is_the_row_major_3x2_grid():
    x = torch.arange(6.0).reshape(6, 1, 1, 1).expand(6, 14, 2, 3)
    grid = S.tile_views(x)
    assert grid.shape == (14, 6, 6)
    assert grid[0, 0, 3] == 1 and grid[0, 2, 0] == 2 and grid[0, 5, 5] == 5
    assert torch.equal(S.untile_views(grid), x)


def test_camera_flip_matches_the_framework_and_puts_points_where_expected():
    from threestudio.ops.cameras import c2w_from_spherical
    from threestudio.ops.splatting import camera_matrices, intrinsics_from_fovy

    c2w = c2w_from_spherical(torch.tensor([20.0, -10.0]), torch.tensor([30.0, 200.0]), 1.5)
    vm, K = S.cameras_for_splatting(c2w, math.radians(39.6), 64, 64)
    vm2, K2 = camera_matrices(c2w, intrinsics_from_fovy(torch.full((2,), math.radians(39.6)), 64, 64))
    assert torch.allclose(vm, vm2, atol=1e-5) and torch.allclose(K, K2, atol=1e-4)
    # object frame: camera at (0, 0, 1.5) looking down -z; a point at (0.1, 0.2, 0) lands right of and above centre
    eye = torch.eye(4)
    eye[2, 3] = 1.5
    sp = one_pixel([0.1, 0.2, 0.0], 0.99, [0.01, 0.01, 0.01], [1, 0, 0, 0], [1, 1, 1])
    out = S.render_splatter(sp, eye[None], math.radians(39.6), 64, 64, background=None, backend="torch")
    a = out["alpha"][0, ..., 0]
    ys, xs = torch.meshgrid(torch.arange(64.0) + 0.5, torch.arange(64.0) + 0.5, indexing="ij")
    f = 32.0 / math.tan(math.radians(19.8))
    cx, cy = (a * xs).sum() / a.sum(), (a * ys).sum() / a.sum()
    assert abs(cx - (32 + f * 0.1 / 1.5)) < 0.05 and abs(cy - (32 - f * 0.2 / 1.5)) < 0.05


def test_mapping_errors_name_the_choices():
    with pytest.raises(ValueError, match="wonder3d"):
        S.get_mapping("nope")
    with pytest.raises(ValueError, match="opacity"):
        S.SplatterMapping(opacity="exp")
    with pytest.raises(ValueError, match="14"):
        S.splatter_to_attribute_images(torch.zeros(6, 13, 4, 4))
