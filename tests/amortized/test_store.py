"""The embedding store: builds, loads back equal (fp16), is reused when it serves a request and built anew beside it
when not (never deleted); rank 0 builds while another rank waits; the per-view embeddings the guidances read match the single-prompt processor's."""

import glob
import json
import os

import numpy as np
import pytest
import torch

from .conftest import write_library

LIB = {"train": ["a red apple", "a blue mug", "a red apple", "a wooden chair"], "val": ["a blue mug"],
       "test": ["a small robot", "a red apple"]}


def _processor(path, sd, vd=True, **kw):
    import threestudio

    cls = threestudio.find("amortized-prompt-library-processor", "prompt-processor")
    return cls({"prompt_library": path, "pretrained_model_name_or_path": sd, "encode_batch_size": 3,
                "use_perp_neg": True, **kw}, view_dependent=vd)


def test_store_builds_and_loads_back_within_fp16(amz, tiny_sd, tmp_path, cache_root):
    path = write_library(tmp_path / "lib.json", LIB)
    pp = _processor(path, tiny_sd)
    meta = pp.store.meta
    assert meta["n_prompts"] == 4 and meta["view_dependent"] and meta["tokens"]  # duplicates stored once
    sizes = {n: os.path.getsize(os.path.join(pp.store.folder, n)) for n in ("pooled.f16", "tokens.f16",
                                                                           "tokens_vd.f16")}
    assert sizes == {"pooled.f16": 4 * 32 * 2, "tokens.f16": 4 * 77 * 32 * 2, "tokens_vd.f16": 4 * 4 * 77 * 32 * 2}
    prompts = LIB["test"]
    direct = pp.encoder.encode_prompts(prompts)
    emb = pp.rows_embeddings("test", [0, 1])
    assert torch.allclose(emb["tokens"], direct["local"].half().float(), atol=2e-3, rtol=1e-3)
    assert torch.allclose(emb["pooled"], direct["global"].half().float(), atol=2e-3, rtol=1e-3)
    assert not torch.allclose(emb["pooled"][0], emb["pooled"][1])
    vd = pp.encoder.encode_prompts(pp.encoder.view_dependent_prompts("a small robot"))["local"]
    assert torch.allclose(emb["tokens_vd"][0], vd.half().float(), atol=2e-3, rtol=1e-3)
    # rows of another split point at the same stored prompt
    assert torch.equal(pp.rows_embeddings("train", [0])["tokens"], pp.rows_embeddings("test", [1])["tokens"])


def test_store_reused_when_it_serves_new_beside_it_when_not(amz, tiny_sd, tmp_path, cache_root):
    from threestudio.utils.weights import save_random_stable_diffusion

    path = write_library(tmp_path / "lib.json", LIB)
    pp = _processor(path, tiny_sd, vd=False)
    meta_path = os.path.join(pp.store.folder, "meta.json")
    stamp = os.stat(meta_path).st_mtime_ns
    before = pp.rows_embeddings("train", [1])["pooled"]
    assert _processor(path, tiny_sd, vd=False).store.folder == pp.store.folder
    assert os.stat(meta_path).st_mtime_ns == stamp  # current: reused, not rebuilt
    # another text encoder (same library) -> a new store beside the first, which is kept as it was
    other_sd = save_random_stable_diffusion(str(tmp_path / "other-sd"), preset="tiny", seed=1)
    pp2 = _processor(path, other_sd, vd=False)
    assert pp2.store.folder.startswith(pp.store.folder + "@") and pp2.store.meta["identity"] != pp.store.meta["identity"]
    assert not torch.allclose(pp2.rows_embeddings("train", [1])["pooled"], before)
    assert os.stat(meta_path).st_mtime_ns == stamp
    # an edited library -> another new store
    write_library(tmp_path / "lib.json", {**LIB, "train": LIB["train"] + ["a green cactus"]})
    pp3 = _processor(path, tiny_sd, vd=False)
    assert pp3.store.meta["n_prompts"] == 5 and pp3.store.folder not in (pp.store.folder, pp2.store.folder)
    assert torch.allclose(pp3.rows_embeddings("train", [1])["pooled"], before)
    # view-dependent variants asked for -> built with them; a plain request (a --test pass) then reuses that store
    # rather than rebuilding or deleting anything
    vd = _processor(path, tiny_sd, vd=True).store
    assert vd.meta["view_dependent"] is True
    stores = sorted(glob.glob(pp.store.folder + "*"))
    assert _processor(path, tiny_sd, vd=False).store.folder in (vd.folder, pp3.store.folder)
    assert sorted(glob.glob(pp.store.folder + "*")) == stores
    # a half-written store (no complete flag) is never used
    vd_meta = os.path.join(vd.folder, "meta.json")
    meta = json.load(open(vd_meta))
    meta.pop("complete")
    json.dump(meta, open(vd_meta, "w"))
    again = _processor(path, tiny_sd, vd=True).store
    assert again.meta["complete"] is True and again.folder != vd.folder


def _rank_main(rank, folder, log, init_file):
    import torch.distributed as dist

    from tests.amortized.conftest import load_ext

    load_ext()
    from custom.amortized.store import expected_meta, open_store

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        lib = {"train": ["p0", "p1", "p2"], "val": ["p1"], "test": ["p2"]}

        def encode(prompts, on_batch):
            with open(log, "a") as f:
                f.write(f"{rank}\n")
            for s in range(0, len(prompts), 2):
                n = len(prompts[s : s + 2])
                base = torch.arange(s, s + n, dtype=torch.float32)[:, None, None]
                on_batch(s, base.expand(n, 3, 4).clone(), base[:, 0].expand(n, 4).clone())

        store = open_store(folder, lib, encode, expected_meta("enc", "h", True, False, ""))
        assert store.pooled(store.row("test", [0]))[0, 0].item() == 2.0
    finally:
        dist.destroy_process_group()


def test_rank0_builds_while_the_other_rank_waits(amz, tmp_path):
    import torch.multiprocessing as mp

    log = tmp_path / "encoded_by.txt"
    mp.spawn(_rank_main, args=(str(tmp_path / "store"), str(log), str(tmp_path / "init")), nprocs=2)
    assert log.read_text().split() == ["0"]
    assert np.fromfile(tmp_path / "store" / "rows_val.i32", dtype=np.int32).tolist() == [1]


def test_multi_prompt_output_matches_single_prompt_outputs(amz):
    from custom.amortized.prompt_processor import MultiPromptOutput
    from threestudio.models.prompt_processors.base import PromptProcessorOutput

    torch.manual_seed(0)
    k, v, L, D = 2, 3, 5, 4
    tok, vd, neg = torch.randn(k, L, D), torch.randn(k, 4, L, D), torch.randn(L, D)
    rep = lambda x: x.repeat_interleave(v, 0)  # noqa: E731
    multi = MultiPromptOutput(text_embeddings=rep(tok), uncond_text_embeddings=neg[None],
                              text_embeddings_vd=rep(vd).transpose(0, 1), uncond_text_embeddings_vd=neg.expand(4, L, D),
                              use_perp_neg=True, has_view_dependent=True)
    elev = torch.tensor([10.0, 70.0, 0.0, 5.0, 20.0, 0.0])
    azim = torch.tensor([0.0, 50.0, 170.0, -100.0, 20.0, 120.0])
    dist = torch.ones(6)
    for vdp in (True, False):
        got = multi.get_text_embeddings(elev, azim, dist, vdp)
        got_pn, w_pn = multi.get_text_embeddings_perp_neg(elev, azim, dist)
        for b in range(k * v):
            single = PromptProcessorOutput(text_embeddings=tok[b // v][None], uncond_text_embeddings=neg[None],
                                           text_embeddings_vd=vd[b // v], uncond_text_embeddings_vd=neg.expand(4, L, D),
                                           use_perp_neg=True)
            one = single.get_text_embeddings(elev[b : b + 1], azim[b : b + 1], dist[b : b + 1], vdp)
            assert torch.allclose(got[b], one[0]) and torch.allclose(got[k * v + b], one[1])
            pn, w = single.get_text_embeddings_perp_neg(elev[b : b + 1], azim[b : b + 1], dist[b : b + 1])
            assert torch.allclose(got_pn[b], pn[0]) and torch.allclose(got_pn[k * v + b], pn[1])
            assert torch.allclose(got_pn[2 * k * v + 2 * b : 2 * k * v + 2 * b + 2], pn[2:4])
            assert torch.allclose(w_pn[b], w[0])
    no_vd = MultiPromptOutput(text_embeddings=rep(tok), uncond_text_embeddings=neg[None],
                              text_embeddings_vd=rep(tok)[None].expand(4, -1, -1, -1),
                              uncond_text_embeddings_vd=neg.expand(4, L, D))
    with pytest.raises(ValueError, match="view_dependent=true"):
        no_vd.get_text_embeddings(elev, azim, dist, True)
