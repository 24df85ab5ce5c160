"""Tiny random Stable Diffusion folders (built from config, saved with save_pretrained, loaded through the same
from_pretrained path a real run uses) and an isolated embedding cache."""

import os

import pytest


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    from threestudio.utils.weights import save_random_stable_diffusion

    return save_random_stable_diffusion(str(tmp_path_factory.mktemp("tiny-sd")), preset="tiny", seed=0)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own THREESTUDIO_CACHE (text embeddings, inductor cache)."""
    monkeypatch.setenv("THREESTUDIO_CACHE", str(tmp_path / "ts-cache"))
    yield


def make_guidance(name, folder, **cfg):
    import threestudio

    return threestudio.find(name)({"pretrained_model_name_or_path": folder, "compile": False, **cfg})


def make_prompt_utils(folder, prompt="a red car", **cfg):
    import threestudio

    pp = threestudio.find("stable-diffusion-prompt-processor")(
        {"prompt": prompt, "pretrained_model_name_or_path": folder, **cfg})
    return pp, pp()


def have_cuda():
    import torch

    return torch.cuda.is_available() and os.environ.get("THREESTUDIO_FORCE_CPU") is None
