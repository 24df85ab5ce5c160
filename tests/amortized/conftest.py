import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXT = os.path.join(REPO, "custom", "amortized")
EXAMPLE = os.path.join(REPO, "load", "prompt_libraries", "amortized_example.json")


def load_ext():
    """Import the extension as launch.py does (package ``custom.amortized``)."""
    from threestudio.utils.extensions import import_extension

    import_extension(EXT, namespace="custom")
    import custom.amortized as amz

    return amz


@pytest.fixture(scope="session")
def amz():
    return load_ext()


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    from threestudio.utils.weights import save_random_stable_diffusion

    return save_random_stable_diffusion(str(tmp_path_factory.mktemp("tiny-sd")), preset="tiny")


@pytest.fixture()
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("THREESTUDIO_CACHE", str(root))
    return root


def write_library(path, library):
    path.write_text(json.dumps(library))
    return str(path)
