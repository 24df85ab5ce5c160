"""Stores are never deleted by a reader: the amortized --test pass (no view-dependent variants asked for) reads the
training store instead of rebuilding a plain one and deleting the training store."""

import glob
import os

from tests.amortized.conftest import amz, cache_root, tiny_sd, write_library  # noqa: F401  (fixtures)
from tests.amortized.test_store import LIB, _processor


def test_a_plain_request_reuses_the_view_dependent_store_of_training(amz, tiny_sd, tmp_path, cache_root):
    """--test after training asks for no view-dependent variants: it must read the training store, not build a
    plain one (87 GB for CP100k) or delete the training store."""
    path = write_library(tmp_path / "lib.json", LIB)
    train = _processor(path, tiny_sd, vd=True).store
    files = {n: os.stat(os.path.join(train.folder, n)).st_mtime_ns for n in os.listdir(train.folder)}
    test = _processor(path, tiny_sd, vd=False)
    assert test.store.folder == train.folder
    assert {n: os.stat(os.path.join(train.folder, n)).st_mtime_ns for n in os.listdir(train.folder)} == files
    assert glob.glob(train.folder + "@*") == []
    emb = test.rows_embeddings("test", [0])
    assert "tokens_vd" not in emb and emb["tokens"].shape[-1] == 32
