"""The objective module (threestudio.systems.objectives): every text-guided system builds its score-distillation
objective through the one builder; the objective checks both models before building either, moves them to the
device, follows the step; loss terms are weighted by system.loss.lambda_<name> with the objective's defaults."""

import glob
import os
from dataclasses import dataclass

import pytest
import torch

import threestudio
from threestudio.registry import _unregister
from threestudio.utils.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT_RECIPES = ["configs/dreamfusion-sd.yaml", "configs/asd-sd-nerf.yaml", "configs/magic3d-coarse-sd.yaml",
                "configs/mvdream-sd21.yaml", "configs/gaussiandreamer-sd.yaml",
                "custom/amortized/configs/tiny-cpu.yaml"]


def _system_from(recipe, tmp_path, *extra):
    from threestudio.utils.extensions import load_extension_folders

    load_extension_folders([], include_custom=True)
    cfg = load_config(os.path.join(REPO, recipe), cli_args=[f"exp_root_dir={tmp_path}",
                                                            "system.prompt_processor.prompt=a test prompt", *extra])
    return cfg, threestudio.find(cfg.system_type, "system")(cfg.system)


@pytest.mark.parametrize("recipe", TEXT_RECIPES)
def test_every_text_guided_system_builds_its_objective_through_the_one_builder(recipe, tmp_path, monkeypatch):
    import threestudio.systems.objectives as objectives

    calls = []
    orig = objectives.build_objective

    def spy(kind, system_cfg, **options):
        calls.append(kind)
        return orig(kind, system_cfg, **options)

    monkeypatch.setattr(objectives, "build_objective", spy)
    cfg, system = _system_from(recipe, tmp_path)
    assert calls == ["score-distillation"]
    obj = system.objective
    assert isinstance(obj, objectives.ScoreDistillation)
    # the recipe's keys reach the objective unchanged
    assert obj.cfg.guidance_type == cfg.system.guidance_type
    assert obj.cfg.prompt_processor_type == cfg.system.prompt_processor_type
    assert obj.cfg.prompt_processor["prompt"] == "a test prompt"
    # threestudio's attribute names; nothing is built before training
    assert system.guidance is None and system.prompt_processor is None and system.prompt_utils is None


def test_no_system_builds_guidance_or_prompt_processors_itself():
    """Finding and building guidance/prompt processors happens in the objectives package only."""
    offenders = []
    for path in glob.glob(os.path.join(REPO, "threestudio", "systems", "**", "*.py"), recursive=True) + \
            glob.glob(os.path.join(REPO, "custom", "**", "*system*.py"), recursive=True):
        if os.sep + "objectives" + os.sep in path:
            continue
        text = open(path, encoding="utf-8").read()
        for needle in ('"prompt-processor"', '"guidance", "system.guidance_type"', ".preflight("):
            if needle in text:
                offenders.append(f"{os.path.relpath(path, REPO)}: {needle}")
    assert not offenders, offenders


def test_reconstruction_systems_compose_photometric(tmp_path):
    from threestudio.systems.objectives import Photometric, ScoreDistillation

    _, nerf = _system_from("configs/quickstart.yaml", tmp_path, "data.dataroot=load/scenes/quickstart")
    assert isinstance(nerf.objective, Photometric) and nerf.guidance is None
    _, gs = _system_from("configs/gaussian-recon.yaml", tmp_path, "data.dataroot=load/scenes/quickstart")
    assert isinstance(gs.objective, Photometric)
    assert gs.objective.default_weight("l1") == 1.0 and gs.objective.default_weight("mse") == 0.0
    from threestudio.systems.gaussian_splatting import GaussianSplattingSystem
    from threestudio.systems.nerf_reconstruction import NeRFReconstruction

    assert not issubclass(GaussianSplattingSystem, NeRFReconstruction)  # composed, not inherited
    _, sd = _system_from("configs/gaussiandreamer-sd.yaml", tmp_path)
    assert isinstance(sd.objective, ScoreDistillation)


# ---------------------------------------------------------------------- score distillation with fake models
EVENTS = []


@pytest.fixture
def fake_models():
    from threestudio.models.guidance.base import BaseGuidance
    from threestudio.utils.base import BaseObject

    EVENTS.clear()

    class Utils:
        def to(self, device):
            EVENTS.append(("utils.to", str(device)))
            return self

    @threestudio.register("test-objective-prompt-processor")
    class PP(BaseObject):
        @dataclass
        class Config:
            prompt: str = ""

        @classmethod
        def preflight(cls, cfg):
            EVENTS.append("pp.preflight")

        def configure(self):
            EVENTS.append("pp.build")

        def __call__(self):
            return Utils()

    @threestudio.register("test-objective-guidance")
    class G(BaseGuidance):
        @dataclass
        class Config(BaseGuidance.Config):
            scale: float = 1.0

        @classmethod
        def preflight(cls, cfg):
            EVENTS.append("g.preflight")

        def configure(self):
            EVENTS.append("g.build")
            self.step = None

        def update_step(self, epoch, global_step, on_load_weights=False):
            self.step = global_step

        def __call__(self, rgb, prompt_utils, elevation, azimuth, distances, **kw):
            return {"loss_sds": rgb.mean() * self.cfg.scale, "loss_extra": rgb.sum() * 0 + 2.0, "grad_norm": 1.0}

    yield
    _unregister("test-objective-prompt-processor")
    _unregister("test-objective-guidance")


def _sd(**cfg):
    from threestudio.systems.objectives import ScoreDistillation

    return ScoreDistillation({"guidance_type": "test-objective-guidance", "guidance": {"scale": 3.0},
                              "prompt_processor_type": "test-objective-prompt-processor",
                              "prompt_processor": {"prompt": "x"}, **cfg})


def test_score_distillation_checks_both_models_before_building_either(fake_models):
    obj = _sd()
    assert obj.needs_training_models
    obj.prepare(torch.device("cpu"), 0, 17)
    assert EVENTS == ["pp.preflight", "g.preflight", "pp.build", ("utils.to", "cpu"), "g.build"]
    assert obj.guidance.device == torch.device("cpu") and obj.guidance.step == 17  # follows the (resumed) step
    assert not obj.needs_training_models
    batch = {"elevation": torch.zeros(1), "azimuth": torch.zeros(1), "camera_distances": torch.ones(1)}
    terms = obj.terms({"comp_rgb": torch.full((1, 2, 2, 3), 0.5)}, batch, lambda name: 1.0)
    assert set(terms) == {"sds", "extra"} and float(terms["sds"]) == pytest.approx(1.5)
    assert obj.default_weight("sds") == 1.0 and obj.default_weight("anything") == 1.0
    obj.release()
    assert obj.guidance is None and obj.needs_training_models


def test_score_distillation_without_loss_terms_says_what_it_got(fake_models):
    obj = _sd()
    with pytest.raises(KeyError, match="returned no 'loss_\\*' terms.*grad_norm"):
        obj.loss_terms({"grad_norm": 1.0})
    with pytest.raises(RuntimeError, match="built when fitting starts"):
        obj.guide(torch.zeros(1, 2, 2, 3), {})


class _Weights:
    """What weighted_loss needs of a system: loss config, C(), logging."""

    def __init__(self, loss, step=0, log_every=1):
        from omegaconf import OmegaConf

        from threestudio.systems.parts.loss_weights import LossWeights

        self.cfg = OmegaConf.create({"loss": loss})
        self.step = step
        self.logged = {}
        self.mixin = LossWeights
        LossWeights.init_loss_weights(self)

    def C(self, value):
        from threestudio.utils.misc import C

        return C(value, 0, self.step)

    def logging_step(self):
        return True

    def log_train(self, name, value):
        self.logged[name] = float(value)

    def loss_weight(self, name, default=0.0):
        return self.mixin.loss_weight(self, name, default)

    def weighted_loss(self, terms, device, defaults):
        return self.mixin.weighted_loss(self, terms, device, defaults)


def test_terms_are_weighted_by_their_lambdas_with_the_objectives_defaults(fake_models):
    obj = _sd()
    terms = obj.loss_terms({"loss_sds": torch.tensor(2.0), "loss_extra": torch.tensor(5.0)})
    defaults = {name: obj.default_weight for name in terms}
    terms["sparsity"] = torch.tensor(7.0)  # a regulariser: weight 0 unless set
    # lambda_sds is a schedule: 0.5 at step 0 -> 1.5 at step 10
    w = _Weights({"lambda_sds": [0, 0.5, 1.5, 10], "lambda_sparsity": 0.1}, step=5)
    loss = w.weighted_loss(terms, torch.device("cpu"), defaults)
    assert float(loss) == pytest.approx(1.0 * 2.0 + 1.0 * 5.0 + 0.1 * 7.0)  # sds at step 5: 1.0; extra: default 1
    assert w.logged == {"train/loss_sds": 2.0, "train/loss_extra": 5.0, "train/loss_sparsity": 7.0}
    w = _Weights({"lambda_extra": 0.0})
    assert float(w.weighted_loss({"extra": torch.tensor(float("nan"))}, torch.device("cpu"),
                                 {"extra": obj.default_weight})) == 0.0  # weight 0: the term is skipped


def test_photometric_computes_a_term_only_when_it_counts():
    from threestudio.systems.objectives import Photometric

    obj = Photometric({"always": ["l1", "mse"], "defaults": {"l1": 1.0}})
    pred, gt = torch.full((1, 16, 16, 3), 0.25), torch.full((1, 16, 16, 3), 0.75)
    out = {"comp_rgb": pred, "opacity": torch.full((1, 16, 16, 1), 0.5)}
    batch = {"rgb": gt, "mask": torch.ones(1, 16, 16, 1)}
    terms = obj.terms(out, batch, lambda name: 0.0)
    assert set(terms) == {"l1", "mse"}
    assert float(terms["l1"]) == pytest.approx(0.5) and float(terms["mse"]) == pytest.approx(0.25)
    terms = obj.terms(out, batch, lambda name: 1.0 if name in ("ssim", "mask") else 0.0)
    assert set(terms) == {"l1", "mse", "ssim", "mask"}
    assert float(terms["mask"]) == pytest.approx(-torch.log(torch.tensor(0.5)).item(), rel=1e-4)
    assert obj.default_weight("l1") == 1.0 and obj.default_weight("ssim") == 0.0
    with pytest.raises(KeyError, match="needs the batch's 'rgb'"):
        obj.terms(out, {}, lambda name: 0.0)
    with pytest.raises(ValueError, match="unknown terms"):
        Photometric({"always": ["lpips"]})
