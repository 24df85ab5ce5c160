"""Frequency and spherical-harmonics encodings against hand formulas, scipy's harmonics and a sphere quadrature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from threestudio.ops.encodings import frequency_encode, progressive_band_mask, sh_encode, sh_n_output_dims


def test_frequency_threestudio_layout_by_hand():
    x = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    out = frequency_encode(x, 3)
    expect = []
    for k in range(3):
        expect += [math.sin(2**k * 0.3), math.sin(2**k * -1.2), math.cos(2**k * 0.3), math.cos(2**k * -1.2)]
    torch.testing.assert_close(out[0], torch.tensor(expect, dtype=torch.float64))


def test_frequency_tcnn_layout_by_hand():
    x = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    out = frequency_encode(x, 2, layout="tcnn")
    expect = []
    for v in (0.3, -1.2):
        for k in range(2):
            expect += [math.sin(2**k * math.pi * v), math.cos(2**k * math.pi * v)]
    torch.testing.assert_close(out[0], torch.tensor(expect, dtype=torch.float64))


def test_progressive_band_mask_values_and_masking():
    m = progressive_band_mask(4, 1.5)
    torch.testing.assert_close(m, torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert progressive_band_mask(4, 0.0).sum() == 0 and progressive_band_mask(4, 4.0).sum() == 4
    x = torch.randn(5, 3)
    out = frequency_encode(x, 4, band_mask=m).reshape(5, 4, 2, 3)  # [N, band, sin/cos, dim]
    full = frequency_encode(x, 4).reshape(5, 4, 2, 3)
    torch.testing.assert_close(out[:, 0], full[:, 0])
    torch.testing.assert_close(out[:, 1], 0.5 * full[:, 1])
    assert torch.count_nonzero(out[:, 2:]) == 0


def test_sh_closed_form_directions():
    c0, c1 = 0.5 / math.sqrt(math.pi), math.sqrt(3 / (4 * math.pi))
    d = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    out = sh_encode(d, 3)
    assert out.shape == (3, 9) and sh_n_output_dims(4) == 16
    # +z: only m = 0 terms; Y_20 = sqrt(5/pi)/4 * (3 - 1)
    torch.testing.assert_close(out[0], torch.tensor([c0, 0, c1, 0, 0, 0, math.sqrt(5 / math.pi) / 2, 0, 0],
                                                    dtype=torch.float64))  # fmt: skip
    # +x: Y_1,1 = -c1 x; Y_20 = -sqrt(5/pi)/4; Y_22 = sqrt(15/pi)/4
    torch.testing.assert_close(out[1], torch.tensor([c0, 0, 0, -c1, 0, 0, -math.sqrt(5 / math.pi) / 4, 0,
                                                     math.sqrt(15 / math.pi) / 4], dtype=torch.float64))  # fmt: skip
    assert out[2, 1].item() == pytest.approx(-c1) and out[2, 8].item() == pytest.approx(-math.sqrt(15 / math.pi) / 4)


def test_sh_matches_scipy_complex_harmonics():
    special = pytest.importorskip("scipy.special")
    if not hasattr(special, "sph_harm_y"):
        pytest.skip("scipy too old for sph_harm_y")
    torch.manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(20, 3, dtype=torch.float64), dim=-1)
    out = sh_encode(d, 4).numpy()
    x, y, z = d.numpy().T
    theta, phi = np.arccos(np.clip(z, -1, 1)), np.arctan2(y, x)  # polar, azimuth
    col = 0
    for l in range(4):
        for m in range(-l, l + 1):
            Y = special.sph_harm_y(l, abs(m), theta, phi)  # complex, Condon-Shortley phase included
            ref = Y.real if m == 0 else math.sqrt(2) * (Y.imag if m < 0 else Y.real)
            np.testing.assert_allclose(out[:, col], ref, atol=1e-12, err_msg=f"l={l} m={m}")
            col += 1


def test_sh_orthonormal_on_sphere_quadrature():
    # Gauss-Legendre in cos(theta) x uniform in phi integrates polynomials of degree <= 2*8-1 exactly.
    u, wu = np.polynomial.legendre.leggauss(8)
    phi = np.arange(16) * (2 * np.pi / 16)
    Z, P = np.meshgrid(u, phi, indexing="ij")
    W = np.repeat(wu[:, None], 16, 1) * (2 * np.pi / 16)
    s = np.sqrt(1 - Z**2)
    d = torch.tensor(np.stack([s * np.cos(P), s * np.sin(P), Z], -1).reshape(-1, 3))
    Y = sh_encode(d, 4)  # [Q, 16]
    gram = Y.T @ (Y * torch.tensor(W.reshape(-1, 1)))
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=1e-12, rtol=0)


def test_sh_degree_errors():
    with pytest.raises(ValueError, match="degree"):
        sh_encode(torch.zeros(1, 3), 5)
