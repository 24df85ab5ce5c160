"""LPIPS in plain torch (threestudio/utils/lpips.py) against an independent float64 re-computation from the saved
state dicts, plus its properties and its weight-file errors. Random weights only: nothing is downloaded."""

import re

import pytest
import torch
import torch.nn.functional as F

from threestudio.utils.lpips import LPIPS, LPIPSWeightsError, Trunk, load_lpips

# torchvision's features layouts, written out independently of the module: ("conv", index, stride, padding),
# ("pool", kernel, stride), ("tap",) after the ReLU that lpips reads
ALEX_PROGRAM = [("conv", 0, 4, 2), ("tap",), ("pool", 3, 2), ("conv", 3, 1, 2), ("tap",), ("pool", 3, 2),
                ("conv", 6, 1, 1), ("tap",), ("conv", 8, 1, 1), ("tap",), ("conv", 10, 1, 1), ("tap",)]
VGG_PROGRAM = [("conv", 0, 1, 1), ("conv", 2, 1, 1), ("tap",), ("pool", 2, 2),
               ("conv", 5, 1, 1), ("conv", 7, 1, 1), ("tap",), ("pool", 2, 2),
               ("conv", 10, 1, 1), ("conv", 12, 1, 1), ("conv", 14, 1, 1), ("tap",), ("pool", 2, 2),
               ("conv", 17, 1, 1), ("conv", 19, 1, 1), ("conv", 21, 1, 1), ("tap",), ("pool", 2, 2),
               ("conv", 24, 1, 1), ("conv", 26, 1, 1), ("conv", 28, 1, 1), ("tap",)]
PROGRAMS = {"alex": ALEX_PROGRAM, "vgg": VGG_PROGRAM}
# torchvision state-dict shapes of the conv weights: index -> (out, in, k, k)
TV_SHAPES = {
    "alex": {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)},
    "vgg": {0: (64, 3, 3, 3), 2: (64, 64, 3, 3), 5: (128, 64, 3, 3), 7: (128, 128, 3, 3), 10: (256, 128, 3, 3),
            12: (256, 256, 3, 3), 14: (256, 256, 3, 3), 17: (512, 256, 3, 3), 19: (512, 512, 3, 3),
            21: (512, 512, 3, 3), 24: (512, 512, 3, 3), 26: (512, 512, 3, 3), 28: (512, 512, 3, 3)},
}
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
SIZE = {"alex": 64, "vgg": 32}


def _random_weights(net, seed=0):
    """A torchvision-format trunk state dict (He-normal convs so every tap carries signal, plus classifier keys that
    must be ignored) and positive lpips-format linear weights."""
    g = torch.Generator().manual_seed(seed)
    trunk = {}
    for i, shape in TV_SHAPES[net].items():
        fan_in = shape[1] * shape[2] * shape[3]
        trunk[f"features.{i}.weight"] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        trunk[f"features.{i}.bias"] = (torch.rand(shape[0], generator=g) - 0.5) * 0.2
    trunk["classifier.1.weight"] = torch.randn(16, 8, generator=g)
    trunk["classifier.1.bias"] = torch.randn(16, generator=g)
    linear = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) + 0.05
              for k, c in enumerate(CHANNELS[net])}
    return trunk, linear


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """net -> (trunk path, linear path, trunk state dict, linear state dict), saved once per module."""
    root = tmp_path_factory.mktemp("lpips")
    out = {}
    for net in ("alex", "vgg"):
        trunk, linear = _random_weights(net)
        tp, lp = root / f"{net}-trunk.pth", root / f"{net}-lin.pth"
        torch.save(trunk, tp)
        torch.save(linear, lp)
        out[net] = (str(tp), str(lp), trunk, linear)
    return out


@pytest.fixture(scope="module")
def alex(files):
    return LPIPS.from_paths(files["alex"][0], files["alex"][1], "alex")


def reference(trunk, linear, net, pred, target):
    """LPIPS v0.1 in float64 straight from the state dicts: the terms of the five taps, [5, B] (sum: per image)."""
    sd = {k: v.double() for k, v in trunk.items()}
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

    def taps(img):
        x = ((img.double().permute(0, 3, 1, 2) * 2 - 1) - shift) / scale
        out = []
        for op in PROGRAMS[net]:
            if op[0] == "conv":
                x = F.relu(F.conv2d(x, sd[f"features.{op[1]}.weight"], sd[f"features.{op[1]}.bias"], stride=op[2],
                                    padding=op[3]))
            elif op[0] == "pool":
                x = F.max_pool2d(x, op[1], op[2])
            else:
                out.append(x)
        return out

    terms = []
    for k, (a, b) in enumerate(zip(taps(pred), taps(target))):
        a = a / (torch.sqrt((a * a).sum(1, keepdim=True)) + 1e-10)
        b = b / (torch.sqrt((b * b).sum(1, keepdim=True)) + 1e-10)
        w = linear[f"lin{k}.model.1.weight"].double().view(1, -1, 1, 1)
        terms.append(((a - b) ** 2 * w).sum(1).mean(dim=(1, 2)))
    return torch.stack(terms)


def _images(net, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    s = SIZE[net]
    x = torch.rand(batch, s, s, 3, generator=g)
    y = (x + 0.3 * torch.randn(batch, s, s, 3, generator=g)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_trunk_has_torchvision_keys(net):
    sd = Trunk(net).state_dict()
    expected = {}
    for i, shape in TV_SHAPES[net].items():
        expected[f"features.{i}.weight"] = shape
        expected[f"features.{i}.bias"] = (shape[0],)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    lin = {k: tuple(v.shape) for k, v in LPIPS(net).state_dict().items() if k.startswith("lin")}
    assert lin == {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(CHANNELS[net])}


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_matches_float64_reference(files, net):
    tp, lp, trunk, linear = files[net]
    model = LPIPS.from_paths(tp, lp, net)
    x, y = _images(net, 2)
    terms = reference(trunk, linear, net, x, y)
    ref = terms.sum(0)
    assert torch.allclose(model.distance(x, y).double(), ref, rtol=1e-4, atol=1e-7)
    assert torch.allclose(model(x, y).double(), ref.mean(), rtol=1e-4, atol=1e-7)
    assert model(x, y).dim() == 0
    # every tap carries signal: a wrong layer would move the result far beyond the float32 tolerance
    assert terms.shape == (5, 2) and (terms > 1e-3 * ref).all()
    # and in float64 the module agrees with the reference to rounding
    assert torch.allclose(model.double().distance(x, y), ref, rtol=1e-10, atol=1e-12)


def test_identical_is_zero_and_symmetric(alex):
    x, y = _images("alex", 2)
    assert alex(x, x).item() == 0.0
    assert torch.allclose(alex(x, y), alex(y, x), rtol=1e-6)
    assert alex(x, y) > 0


def test_batch_mean_equals_mean_of_singles(alex):
    x, y = _images("alex", 3)
    singles = torch.stack([alex(x[i], y[i]) for i in range(3)])  # unbatched [H, W, 3] inputs
    assert torch.allclose(alex(x, y), singles.mean(), rtol=1e-5)
    assert torch.allclose(alex(x[:1], y[:1]), singles[0], rtol=1e-6)


def test_differentiable_and_frozen(alex):
    x, y = _images("alex", 1)
    x.requires_grad_(True)
    alex(x, y).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in alex.parameters()) and not alex.training


def test_safetensors_files(files, tmp_path, alex):
    from safetensors.torch import save_file

    _, _, trunk, linear = files["alex"]
    tp, lp = tmp_path / "alex.safetensors", tmp_path / "lin.safetensors"
    save_file(trunk, str(tp))
    save_file(linear, str(lp))
    model = LPIPS.from_paths(str(tp), str(lp), "alex")
    x, y = _images("alex", 1)
    assert torch.equal(model(x, y), alex(x, y))


def test_missing_file_names_path_and_source(files, tmp_path):
    tp, lp = files["alex"][:2]
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(LPIPSWeightsError, match=re.escape(f"{missing} does not exist")) as e:
        LPIPS.from_paths(missing, lp, "alex")
    assert "lpips.backbone_weights" in str(e.value)
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in str(e.value)
    with pytest.raises(LPIPSWeightsError, match=re.escape(f"{missing} does not exist")) as e:
        LPIPS.from_paths(files["vgg"][0], missing, "vgg")
    assert "lpips.linear_weights" in str(e.value) and "lpips/weights/v0.1/vgg.pth" in str(e.value)
    # both files missing: one error with both problems
    with pytest.raises(LPIPSWeightsError, match="2 problems found") as e:
        LPIPS.from_paths(missing, missing + "2", "alex", key="system.lpips")
    assert [i.key for i in e.value.issues] == ["system.lpips.backbone_weights", "system.lpips.linear_weights"]


def test_missing_and_unexpected_keys(files, tmp_path):
    tp, lp, trunk, linear = files["alex"]
    bad = tmp_path / "trunk-missing.pth"
    torch.save({k: v for k, v in trunk.items() if k != "features.6.bias"}, bad)
    with pytest.raises(LPIPSWeightsError, match=re.escape(f"{bad} do not fit: missing keys features.6.bias")) as e:
        LPIPS.from_paths(str(bad), lp, "alex")
    assert "alexnet-owt-7be5be79.pth" in str(e.value)
    extra = tmp_path / "lin-extra.pth"
    torch.save({**linear, "lin5.model.1.weight": torch.ones(1, 8, 1, 1)}, extra)
    with pytest.raises(LPIPSWeightsError, match=re.escape("unexpected keys lin5.model.1.weight")):
        LPIPS.from_paths(tp, str(extra), "alex")
    # the two files swapped: every trunk key is missing and the linear keys are unexpected
    with pytest.raises(LPIPSWeightsError, match=r"missing keys features\.0\.weight.*unexpected keys lin0"):
        LPIPS.from_paths(lp, tp, "alex")


def test_wrong_shapes(files, tmp_path):
    tp, lp, trunk, linear = files["alex"]
    bad = tmp_path / "lin-shape.pth"
    torch.save({**linear, "lin2.model.1.weight": torch.ones(1, 100, 1, 1)}, bad)
    with pytest.raises(LPIPSWeightsError, match=re.escape(
            f"{bad} do not fit: wrong shapes lin2.model.1.weight (expected [1, 384, 1, 1], got [1, 100, 1, 1])")):
        LPIPS.from_paths(tp, str(bad), "alex")
    # vgg linear weights given for alex
    with pytest.raises(LPIPSWeightsError, match=re.escape("lin1.model.1.weight (expected [1, 192, 1, 1], got [1, 128")):
        LPIPS.from_paths(tp, files["vgg"][1], "alex")


def test_unreadable_file(files, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(LPIPSWeightsError, match=re.escape(f"{junk} could not be read")):
        LPIPS.from_paths(str(junk), files["alex"][1], "alex")


def test_load_lpips(files):
    tp, lp = files["alex"][:2]
    assert load_lpips(None) is None
    assert load_lpips({}) is None
    assert load_lpips({"backbone_weights": None, "linear_weights": ""}) is None
    model = load_lpips({"backbone_weights": tp, "linear_weights": lp})
    assert isinstance(model, LPIPS) and model.net_type == "alex"
    with pytest.raises(LPIPSWeightsError, match="system.lpips.linear_weights: LPIPS needs both"):
        load_lpips({"backbone_weights": tp}, key="system.lpips")


def test_bad_arguments(alex):
    with pytest.raises(ValueError, match="one of"):
        LPIPS("squeeze")
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        alex(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
