"""Adan against a step computed by hand (the paper's Algorithm 1 in its own notation), and every amortized recipe
loads, validates and builds."""

import glob
import math
import os

import pytest
import torch

from .conftest import REPO


def test_adan_matches_a_hand_computed_step(amz):
    from threestudio.systems.optimizers import Adan

    lr, eps, wd = 0.1, 1e-8, 0.02
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Adan([p], lr=lr, betas=(0.98, 0.92, 0.99), eps=eps, weight_decay=wd)
    grads = [[0.5, -1.0], [0.25, 3.0]]
    # the paper's betas are the weights of the NEW term: 0.02, 0.08, 0.01
    b1, b2, b3 = 0.02, 0.08, 0.01
    theta = [1.0, -2.0]
    m, v, n, g_prev = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], None
    for k, g in enumerate(grads, start=1):
        p.grad = torch.tensor(g)
        opt.step()
        for i in range(2):
            diff = 0.0 if g_prev is None else g[i] - g_prev[i]
            m[i] = (1 - b1) * m[i] + b1 * g[i]
            v[i] = (1 - b2) * v[i] + b2 * diff
            n[i] = (1 - b3) * n[i] + b3 * (g[i] + (1 - b2) * diff) ** 2
            mh, vh, nh = m[i] / (1 - (1 - b1) ** k), v[i] / (1 - (1 - b2) ** k), n[i] / (1 - (1 - b3) ** k)
            theta[i] = (theta[i] - lr * (mh + (1 - b2) * vh) / (math.sqrt(nh) + eps)) / (1 + lr * wd)
        g_prev = g
        assert torch.allclose(p.detach(), torch.tensor(theta), atol=1e-6), (k, p, theta)


RECIPES = sorted(p for p in glob.glob(os.path.join(REPO, "custom", "amortized", "configs", "*.yaml")))


def test_the_six_recipes_exist():
    names = {os.path.basename(p) for p in RECIPES}
    assert names == {"asd-sd-hyper-ingp-mg15.yaml", "asd-sd-3dconv-df415.yaml", "asd-sd-3dconv-at2520.yaml",
                     "asd-mv-triplane-dl17k.yaml", "asd-sd-3dconv-cp100k.yaml", "tiny-cpu.yaml"}


@pytest.mark.parametrize("recipe", RECIPES, ids=[os.path.basename(p) for p in RECIPES])
def test_recipe_loads_and_builds(amz, recipe, tmp_path):
    import threestudio
    from threestudio.utils.config import ConfigError, load_config

    if not recipe.endswith("tiny-cpu.yaml"):
        with pytest.raises(ConfigError, match="prompt_library"):  # the library is mandatory
            load_config(recipe, cli_args=[f"exp_root_dir={tmp_path}"])
    cfg = load_config(recipe, cli_args=[f"exp_root_dir={tmp_path}", "system.prompt_processor.prompt_library="
                                        "amortized_example", "system.guidance.pretrained_model_name_or_path=/x"])
    assert cfg.data.prompt_library == "amortized_example" and cfg.tag == "amortized_example"
    dm = threestudio.find(cfg.data_type, "data")(cfg.data)
    system = threestudio.find(cfg.system_type, "system")(cfg.system)
    assert len(dm.shard("test")) == 4 and sum(p.numel() for p in system.parameters()) > 0
    n = cfg.trainer.max_steps
    assert list(cfg.system.guidance.max_step_percent)[-1] == n  # the t-window anneals over the whole run
