"""ONNX export: onnxruntime (CPU, float32) reproduces PyTorch within 1e-4 for student.onnx, sampler.onnx,
embedder.onnx and nelf_full.onnx; GELU is the standard operator; the files carry no custom operators."""

import json
import os

import pytest
import torch

from .conftest import load_ext
from .test_nelf import tiny_student

load_ext()
from custom.mobilegen3d.export import FILES, example_inputs, export_onnx  # noqa: E402

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    s = tiny_student(lr=(4, 6))
    s.train()  # move the BatchNorm statistics away from their initial values
    with torch.no_grad():
        for _ in range(3):
            s(torch.randn(2, s.in_channels, 4, 6) * 2 + 0.3)
    s.eval()
    out = tmp_path_factory.mktemp("onnx")
    return s, export_onnx(s, str(out), verify=True)


@pytest.mark.parametrize("part", ["student", "sampler", "embedder", "full"])
def test_onnxruntime_matches_pytorch(exported, part):
    s, files = exported
    module = {"student": s, "sampler": s.sampler(), "embedder": s.embedder(), "full": s.pipeline()}[part]
    sess = ort.InferenceSession(files[part], providers=["CPUExecutionProvider"])
    for batch in (1, 2):  # the batch axis is dynamic
        feeds = example_inputs(s, part, batch=batch, seed=batch)
        with torch.no_grad():
            ref = module(*feeds.values()).numpy()
        (got,) = sess.run(None, {k: v.numpy() for k, v in feeds.items()})
        assert got.shape == ref.shape
        assert abs(got - ref).max() <= 1e-4, (part, batch, abs(got - ref).max())
    assert os.path.basename(files[part]) == FILES[part]


def test_graphs_use_standard_operators(exported):
    s, files = exported
    model = onnx.load(files["full"])
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert "Gelu" in ops and "BatchNormalization" not in ops  # BN folded into the convolutions
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "c2w" and out.name == "rgb"
    assert [d.dim_value for d in out.type.tensor_type.shape.dim][1:] == [32, 48, 3]
    student = onnx.load(files["student"])
    assert [i.name for i in student.graph.input] == ["input"]
    assert [d.dim_value for d in student.graph.input[0].type.tensor_type.shape.dim][1:] == [s.in_channels, 4, 6]


def test_intrinsics_json(exported):
    s, files = exported
    info = json.load(open(files["intrinsics"]))
    assert (info["H"], info["W"], info["h"], info["w"]) == (32, 48, 4, 6)
    assert info["n_samples"] == 4 and info["multires"] == 3 and info["scale"] == 3.5
    assert (info["near"], info["far"]) == (0.5, 3.5) and info["focal"] == pytest.approx(5.4)
    assert info["intrinsics"] == pytest.approx([43.2, 43.2, 24.0, 16.0])
    assert set(info["max_abs_diff_vs_torch"]) == {"student", "sampler", "embedder", "full"}
    assert max(info["max_abs_diff_vs_torch"].values()) <= 1e-4


def test_missing_onnx_names_the_packages(monkeypatch, tmp_path):
    import builtins

    from threestudio.utils.imports import MissingDependencyError

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.split(".")[0] == "onnx":
            raise ImportError("No module named 'onnx'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    monkeypatch.delitem(__import__("sys").modules, "onnx", raising=False)
    with pytest.raises(MissingDependencyError, match=r"pip install onnx onnxruntime"):
        export_onnx(tiny_student(), str(tmp_path))
