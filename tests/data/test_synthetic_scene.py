"""The procedural scene generator: determinism, alpha, a pixel checked by hand, skip-if-complete, the CLI."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from threestudio.data.synthetic_scene import (
    COMPLETE_MARKER,
    OWNER_MARKER,
    Light,
    Primitive,
    default_primitives,
    make_scene,
    scene_radius,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _files(folder):
    out = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = f.read()
    return out


def _png(folder, rel):
    return np.asarray(Image.open(os.path.join(folder, rel)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("scene") / "tiny"
    res = make_scene(str(out), n_train=4, n_test=2, resolution=32, seed=3, progress=False)
    return str(out), res


def test_layout_and_json(tiny):
    out, res = tiny
    assert not res.skipped
    files = set(_files(out))
    expected = {f"images/train_{i:03d}.png" for i in range(4)} | {f"images/test_{i:03d}.png" for i in range(2)}
    assert expected | {"transforms_train.json", "transforms_test.json", "scene.json", COMPLETE_MARKER,
                       OWNER_MARKER} == files
    with open(os.path.join(out, "transforms_train.json")) as f:
        tr = json.load(f)
    assert len(tr["frames"]) == 4 and tr["w"] == 32 and tr["h"] == 32
    # focal from the 45 degree horizontal fov: 16 / tan(22.5 deg)
    assert tr["fl_x"] == pytest.approx(16.0 / math.tan(math.radians(22.5)))
    assert tr["camera_angle_x"] == pytest.approx(math.radians(45.0))
    assert tr["scene_radius"] == pytest.approx(scene_radius(default_primitives(3)))
    for fr in tr["frames"]:
        m = np.asarray(fr["transform_matrix"])
        assert m.shape == (4, 4)
        assert np.linalg.norm(m[:3, 3]) == pytest.approx(2.0, abs=1e-5)  # cameras on the sphere of radius 2
        # OpenGL: the camera looks along -z, i.e. at the origin
        np.testing.assert_allclose(-m[:3, 2], -m[:3, 3] / 2.0, atol=1e-5)
    with open(os.path.join(out, "transforms_test.json")) as f:
        te = json.load(f)
    # the held-out turntable is at elevation 20 deg: z = 2 sin(20 deg)
    for fr in te["frames"]:
        assert fr["transform_matrix"][2][3] == pytest.approx(2.0 * math.sin(math.radians(20.0)), abs=1e-5)
    img = _png(out, "images/train_000.png")
    assert img.shape == (32, 32, 4) and img.dtype == np.uint8


def test_deterministic_for_a_seed(tiny, tmp_path):
    out, _ = tiny
    again = tmp_path / "again"
    make_scene(str(again), n_train=4, n_test=2, resolution=32, seed=3, progress=False)
    a, b = _files(out), _files(str(again))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k], k
    other = tmp_path / "other"
    make_scene(str(other), n_train=4, n_test=2, resolution=32, seed=4, progress=False)
    c = _files(str(other))
    assert c["transforms_train.json"] != a["transforms_train.json"]
    assert c["images/train_000.png"] != a["images/train_000.png"]


def test_alpha_centre_and_corner(tiny):
    out, _ = tiny
    # the origin lies inside the big sphere, and every camera looks at it: its centre pixels are fully covered
    for rel in ("images/train_000.png", "images/train_002.png", "images/test_001.png"):
        img = _png(out, rel)
        assert img[15, 15, 3] == 255 and img[16, 16, 3] == 255
        # the corner rays pass ~31 deg off axis; the object's bounding sphere subtends asin(0.72 / 2) ~ 21 deg
        assert img[0, 0, 3] == 0 and img[31, 31, 3] == 0 and img[0, 31, 3] == 0
        a = img[..., 3]
        assert 0.05 < (a > 0).mean() < 0.9
        assert ((a > 0) & (a < 255)).any()  # soft silhouette edges from supersampling


def _hand_pixel(c2w, f, cx, cy, col, row, center, radius, prim, light):
    """Average the 2x2 sub-pixel rays of one pixel through a lone sphere, intersected analytically."""
    cols = []
    R, o = c2w[:3, :3], c2w[:3, 3]
    l_dir = np.asarray(light.direction) / np.linalg.norm(light.direction)
    for sy in (0.25, 0.75):
        for sx in (0.25, 0.75):
            u, v = col + sx, row + sy
            d = R @ np.array([(u - cx) / f, -(v - cy) / f, -1.0])
            d /= np.linalg.norm(d)
            oc = o - center
            b = oc @ d
            disc = b * b - (oc @ oc - radius**2)
            assert disc > 0, "the chosen pixel must be fully inside the sphere's silhouette"
            t = -b - math.sqrt(disc)
            p = o + t * d
            n = (p - center) / radius
            w = 0.5 + 0.5 * math.sin(2 * math.pi * prim.frequency * (p - center)[2])
            albedo = np.asarray(prim.color_a) * (1 - w) + np.asarray(prim.color_b) * w
            cols.append(albedo * (light.ambient + (1 - light.ambient) * max(0.0, n @ l_dir)))
    return np.mean(cols, axis=0)


def test_pixel_matches_hand_shading(tmp_path):
    center = np.array([0.05, -0.03, 0.02])
    prim = Primitive("sphere", tuple(center), {"radius": 0.4}, texture="stripes", color_a=(0.9, 0.2, 0.1),
                     color_b=(0.1, 0.3, 0.9), frequency=1.5, axis=2)
    light = Light(direction=(0.3, -0.5, 0.8), ambient=0.25)
    out = str(tmp_path / "sphere")
    make_scene(out, n_train=2, n_test=1, resolution=32, seed=0, primitives=[prim], light=light, progress=False)
    with open(os.path.join(out, "transforms_train.json")) as f:
        tr = json.load(f)
    assert tr["scene_radius"] == pytest.approx(np.linalg.norm(center) + 0.4)
    f_, cx, cy = tr["fl_x"], tr["cx"], tr["cy"]
    checked = 0
    for i, fr in enumerate(tr["frames"]):
        c2w = np.asarray(fr["transform_matrix"], dtype=np.float64)
        img = _png(out, fr["file_path"]).astype(np.float64) / 255.0
        for col, row in ((17, 13), (12, 18), (15, 16)):
            expected = _hand_pixel(c2w, f_, cx, cy, col, row, center, 0.4, prim, light)
            assert img[row, col, 3] == 1.0
            np.testing.assert_allclose(img[row, col, :3], expected, atol=0.6 / 255 + 1e-3)
            checked += 1
        assert img[1, 1, 3] == 0.0  # misses the sphere
    assert checked == 6


def test_rerun_skips_and_param_change_rerenders(tmp_path):
    out = str(tmp_path / "s")
    first = make_scene(out, n_train=2, n_test=1, resolution=16, progress=False)
    assert not first.skipped
    img = os.path.join(out, "images/train_000.png")
    mtime = os.stat(img).st_mtime_ns
    again = make_scene(out, n_train=2, n_test=1, resolution=16, progress=False)
    assert again.skipped and os.stat(img).st_mtime_ns == mtime
    # other parameters: rendered again
    other = make_scene(out, n_train=2, n_test=2, resolution=16, progress=False)
    assert not other.skipped and os.path.isfile(os.path.join(out, "images/test_001.png"))
    # a listed file gone: not complete any more
    os.remove(os.path.join(out, "images/test_001.png"))
    assert not make_scene(out, n_train=2, n_test=2, resolution=16, progress=False).skipped
    with open(os.path.join(out, COMPLETE_MARKER)) as f:
        marker = json.load(f)
    assert marker["params"]["n_test"] == 2 and "images/test_001.png" in marker["files"]


def test_bad_arguments_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="resolution=2"):
        make_scene(str(tmp_path / "x"), resolution=2, progress=False)
    with pytest.raises(ValueError, match="Unknown primitive kind 'cone'"):
        Primitive("cone", (0, 0, 0), {})
    with pytest.raises(ValueError, match="missing: minor"):
        Primitive("torus", (0, 0, 0), {"major": 0.3})
    with pytest.raises(ValueError, match="distance 0.5 must exceed"):
        make_scene(str(tmp_path / "y"), distance=0.5, progress=False)


def test_cli(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_synthetic_scene",
                                                  os.path.join(REPO, "scripts", "make_synthetic_scene.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = str(tmp_path / "cli")
    args = ["--out", out, "--n-train", "2", "--n-test", "1", "--res", "16", "--no-progress"]
    assert mod.main(args) == 0
    assert "wrote 6 files" in capsys.readouterr().out
    with open(os.path.join(out, "transforms_train.json")) as f:
        assert json.load(f)["w"] == 16
    assert mod.main(args) == 0
    assert "already there" in capsys.readouterr().out
    assert mod.main(["--out", out, "--res", "3", "--no-progress"]) == 2
    assert "resolution=3" in capsys.readouterr().err
