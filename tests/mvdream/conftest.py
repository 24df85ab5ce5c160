"""Shared fixtures: MVDream's reference data (skipped with a message when absent) and a tiny random checkpoint in
``sd-v2.1-base-4view.pt``'s exact layout, plus a byte-level CLIP tokenizer, built once per session."""

import os

import pytest

DATA = os.environ.get("THREESTUDIO_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "..",
                                                               "shared", "data"))
MVDREAM_DATA = os.path.abspath(os.path.join(DATA, "mvdream"))


def data_file(name):
    path = os.path.join(MVDREAM_DATA, name)
    if not os.path.isfile(path):
        pytest.skip(f"MVDream reference data {name} not found in {MVDREAM_DATA} (set THREESTUDIO_SHARED_DATA to the "
                    f"folder holding mvdream/)")
    return path


class TinyMVDream:
    def __init__(self, root):
        from threestudio.models.diffusion.mvdream import loading
        from threestudio.utils.weights import save_toy_clip_tokenizer

        self.root = str(root)
        self.ckpt = os.path.join(self.root, "tiny-4view.pt")
        self.tokenizer = os.path.join(self.root, "tok")
        self.models = loading.save_random_mvdream_checkpoint(self.ckpt, "tiny", seed=0)
        save_toy_clip_tokenizer(os.path.join(self.tokenizer, "tokenizer"))
        self.cache = os.path.join(self.root, "cache")


@pytest.fixture(scope="session")
def tiny_mvdream(tmp_path_factory):
    return TinyMVDream(tmp_path_factory.mktemp("mvdream"))


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run many tiny ops: one intra-op thread is faster, and far faster when the 2 cores are shared
    (OpenMP barriers with descheduled threads cost milliseconds per op). Restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
