"""Missing, incomplete, misshapen and gated weights: the run stops at start-up and says how to fix it."""

import json
import os
import shutil

import pytest

import threestudio
from threestudio.utils.weights import PretrainedWeightsError, check_pretrained, load_pretrained

KEY = "system.guidance.pretrained_model_name_or_path"


def test_missing_folder_names_model_place_and_fix(tmp_path):
    missing = str(tmp_path / "nowhere" / "sd21")
    with pytest.raises(PretrainedWeightsError) as e:
        threestudio.find("stable-diffusion-guidance")({"pretrained_model_name_or_path": missing})
    msg = str(e.value)
    assert KEY in msg and "Stable Diffusion" in msg
    assert f"looked in the local folder {missing}, which does not exist" in msg
    assert "huggingface-cli download stabilityai/stable-diffusion-2-1-base --local-dir" in msg
    assert f"set {KEY}=/path/to/" in msg


def test_incomplete_folder_lists_what_is_missing(tiny_sd, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd, broken)
    os.remove(broken / "unet" / "diffusion_pytorch_model.safetensors")
    shutil.rmtree(broken / "scheduler")
    with pytest.raises(PretrainedWeightsError, match=r"missing unet/\*\.safetensors \(the weights\), scheduler/ "
                                                     r"\(no such folder\)"):
        check_pretrained(str(broken), ("unet", "vae", "scheduler"), KEY, "Stable Diffusion")
    pp_key = "system.prompt_processor.pretrained_model_name_or_path"
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(PretrainedWeightsError, match=f"(?s){pp_key}.*missing text_encoder/"):
        threestudio.find("stable-diffusion-prompt-processor")({"pretrained_model_name_or_path": str(broken)})


def test_wrong_shapes_are_reported(tiny_sd, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_sd, bad)
    cfg_path = bad / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["cross_attention_dim"] = 64  # the stored attention weights are for 32
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(PretrainedWeightsError, match=r"(?s)Stable Diffusion unet weights for .*bad.*do not have "
                                                     r"the expected shapes.*Looked in the local folder"):
        threestudio.find("stable-diffusion-guidance")({"pretrained_model_name_or_path": str(bad), "compile": False})


def test_uncached_hub_id_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(PretrainedWeightsError) as e:
        check_pretrained("stabilityai/stable-diffusion-2-1-base", ("unet",), KEY, "Stable Diffusion")
    msg = str(e.value)
    assert "not in the Hugging Face cache and HF_HUB_OFFLINE is set" in msg
    assert str(tmp_path / "hf" / "models--stabilityai--stable-diffusion-2-1-base") in msg


def test_gated_and_unknown_repositories_are_explained():
    from types import SimpleNamespace

    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    response = SimpleNamespace(headers={}, request=None, status_code=401)  # what the hub client would attach

    class Gated:  # what from_pretrained raises for a gated repository without access
        @staticmethod
        def from_pretrained(*a, **k):
            raise GatedRepoError("401 Client Error: access to this repo is restricted", response=response)

    class Unknown:
        @staticmethod
        def from_pretrained(*a, **k):
            raise RepositoryNotFoundError("404 Repository Not Found", response=response)

    with pytest.raises(PretrainedWeightsError, match="gated repository: accept its licence on "
                                                     "https://huggingface.co/org/model and log in"):
        load_pretrained(Gated, "org/model", "unet", KEY, "Stable Diffusion")
    with pytest.raises(PretrainedWeightsError, match="no repository 'org/model' on the Hugging Face Hub"):
        load_pretrained(Unknown, "org/model", "unet", KEY, "Stable Diffusion")


def test_launch_stops_before_training_with_the_message(tmp_path, monkeypatch):
    import logging

    from threestudio.launcher import main

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("threestudio").addHandler(handler)
    monkeypatch.delenv("THREESTUDIO_TRIAL_TIMESTAMP", raising=False)
    missing = str(tmp_path / "no-sd")
    rc = main(["--config", os.path.join(os.path.dirname(__file__), "..", "..", "configs", "dreamfusion-sd.yaml"),
               "--train", "system.prompt_processor.prompt=a cat", f"exp_root_dir={tmp_path / 'out'}",
               f"system.prompt_processor.pretrained_model_name_or_path={missing}", "trainer.enable_progress_bar=false"])
    monkeypatch.delenv("THREESTUDIO_TRIAL_TIMESTAMP", raising=False)
    logging.getLogger("threestudio").removeHandler(handler)
    errors = "\n".join(r.getMessage() for r in records if r.levelno >= logging.ERROR)
    assert "Pretrained weights not available" in errors and missing in errors and "huggingface-cli download" in errors
    assert rc == 2  # a config/setup problem, reported without a traceback
    # a run that failed before its first step leaves no trial folder (nor a checkpoint) behind
    exp = tmp_path / "out" / "dreamfusion-sd"
    assert not exp.exists() or list(exp.iterdir()) == []
