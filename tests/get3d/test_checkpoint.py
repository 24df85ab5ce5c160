"""Official checkpoint layout (state_dict_shapes.json), the loader's errors, and our own generator files."""

import json
import os

import pytest
import torch

from .conftest import TINY_G, data_file, get3d

get3d()
from custom.get3d import checkpoint as K  # noqa: E402
from custom.get3d.generator import GET3DGenerator  # noqa: E402

FULL = dict(tet_res=4)  # official widths; a tiny grid (the grid is not in the checkpoint)


@pytest.fixture(scope="module")
def shapes():
    with open(data_file("state_dict_shapes.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def full_gen():
    return GET3DGenerator(FULL)


def _random(spec):
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(*v, generator=g) if len(v) else torch.randn((), generator=g) for k, v in spec.items()}


def test_layouts_match_the_official_ones(shapes, full_gen):
    assert dict(K.module_shapes(full_gen)) == {k: tuple(v) for k, v in shapes["G[dmtet]"].items()}
    fc = GET3DGenerator(dict(FULL, iso_surface="flexicubes"))
    assert dict(K.module_shapes(fc)) == {k: tuple(v) for k, v in shapes["G[flexicubes]"].items()}
    assert list(K.discriminator_shapes().items()) == [(k, tuple(v)) for k, v in shapes["D"].items()]
    assert (full_gen.num_ws_tex, full_gen.num_ws_geo) == (9, 22)


def test_loader_accepts_official_shapes(shapes, full_gen, tmp_path):
    g_sd, d_sd = _random(shapes["G[dmtet]"]), _random(shapes["D"])
    path = str(tmp_path / "official.pt")
    torch.save({"G": g_sd, "G_ema": g_sd, "D": d_sd}, path)
    ckpt = K.load_official(path, full_gen)
    for k, v in full_gen.state_dict().items():
        assert torch.equal(v, g_sd[k]), k
    assert set(ckpt["D"]) == set(shapes["D"])


def _write(tmp_path, sd, name="bad.pt"):
    path = str(tmp_path / name)
    torch.save({"G": sd, "G_ema": sd}, path)
    return path


def test_loader_rejects_missing_extra_and_misshapen(full_gen, tmp_path):
    good = {k: torch.zeros(v) for k, v in K.module_shapes(full_gen).items()}
    missing = dict(good)
    del missing["synthesis.generator.tri_plane_synthesis.b64.togeo.affine.weight"]
    with pytest.raises(K.CheckpointError, match=r"missing tensor 'synthesis\.generator\.tri_plane_synthesis\.b64"
                                                r"\.togeo\.affine\.weight'"):
        K.load_official(_write(tmp_path, missing), full_gen)
    extra = dict(good, **{"synthesis.generator.mlp_synthesis_weight.layers.0.weight": torch.zeros(32, 256)})
    with pytest.raises(K.CheckpointError, match=r"unexpected tensor 'synthesis\.generator\.mlp_synthesis_weight"):
        K.load_official(_write(tmp_path, extra), full_gen)
    bad = dict(good, **{"mapping.fc3.weight": torch.zeros(512, 256)})
    with pytest.raises(K.CheckpointError, match=r"misshapen tensor 'mapping\.fc3\.weight': \[512, 256\]"):
        K.load_official(_write(tmp_path, bad), full_gen)
    d = {k: torch.zeros(v) for k, v in K.discriminator_shapes().items()}
    d["mask_b4.out.weight"] = torch.zeros(3, 3)
    path = str(tmp_path / "badD.pt")
    torch.save({"G": good, "G_ema": good, "D": d}, path)
    with pytest.raises(K.CheckpointError, match=r"\['D'\].*\n.*misshapen tensor 'mask_b4\.out\.weight'"):
        K.load_official(path, full_gen)


def test_loader_errors_name_the_file_and_key(full_gen, tmp_path):
    with pytest.raises(K.CheckpointError, match="not found: .*nope.pt"):
        K.load_official(str(tmp_path / "nope.pt"), full_gen)
    path = str(tmp_path / "nada.pt")
    torch.save({"g_ema": {}}, path)
    with pytest.raises(K.CheckpointError, match="no 'G_ema'.*'g_ema': rename"):
        K.load_official(path, full_gen)
    path = str(tmp_path / "pickled.pt")
    torch.save({"G_ema": object()}, path)
    with pytest.raises(K.CheckpointError, match="weights_only=True"):
        K.load_official(path, full_gen)


def test_own_checkpoint_roundtrip_is_also_official(tmp_path):
    torch.manual_seed(3)
    gen = GET3DGenerator(TINY_G)
    for p in gen.parameters():
        p.data.normal_()
    gen.mapping.w_avg.normal_()
    path = K.save_generator(str(tmp_path / "sub" / "gen.pt"), gen)
    back = K.load_generator(path)
    for (k, a), (k2, b) in zip(gen.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert back.cfg.tri_plane_resolution == 16
    other = GET3DGenerator(TINY_G)
    K.load_official(path, other)  # the same file loads as an official checkpoint
    assert torch.equal(other.mapping.w_avg, gen.mapping.w_avg)
    assert not [n for n in os.listdir(tmp_path / "sub") if n.startswith(".")]  # no temp file left
