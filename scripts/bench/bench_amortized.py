#!/usr/bin/env python
"""Amortized text-to-3D (custom/amortized) at corpus scale, on a GPU: embedding-store size and host memory, and
training throughput per generator.

No download: a generated 110k-prompt corpus (template prompts, like CP100k's size), a Stable Diffusion 2.1 base
folder with random weights at full size (UNet, VAE, and a CLIP text encoder of SD-2.1's shape: 23 layers, width
1024, MLP 4096; toy byte-level tokenizer), all loaded through the same ``from_pretrained`` paths as a real run.

Stages, each in its own process (so that peak RSS is that stage's):

1. ``store``: the real store build (rank 0's work) with the full-size text encoder on ``--encode-prompts`` prompts
   of the corpus (a fraction of 110k when encoding all would not fit the time budget: size and time are then
   extrapolated linearly and reported as such), tokens + pooled, fp16; encode throughput, bytes on disk, peak RSS.
2. ``full-store``: a store of the whole 110k corpus in the same format and writer, with a synthetic encoder (random
   fp16 values, no model) -> the real size on disk at 110k and the builder's peak RSS at corpus scale.
3. ``readers``: ``--ranks`` reader processes (simulated DDP ranks, each with its shard) map the 110k store read-only
   and read random batches (k prompts: pooled + tokens) -> peak RSS per rank. Baseline in the same run: the
   authors' layout (per-prompt fp32 files of 5 local + 5 global embeddings, all loaded into RAM per rank), computed
   from its shapes.
4. ``train``: training throughput (prompts/s) per generator at 64^2, full-size random SD-2.1 ASD guidance (the
   recipes' settings, Perp-Neg on, 5 UNet rows per image), eager guidance (``--compile`` to compile it), k prompts
   per step; ``--gpus N`` runs N ranks with DistributedDataParallel (NCCL) and reports the scaling against 1 GPU.

    python scripts/bench/bench_amortized.py --json out.json [--stages store,full-store,readers,train] [--gpus 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
T0 = time.time()


def log(msg: str) -> None:
    print(f"[bench +{time.time() - T0:6.1f}s] {msg}", flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: reset at exec, unlike ru_maxrss, which a child inherits from the
    parent that forked it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_ext() -> None:
    from threestudio.utils.extensions import import_extension

    import_extension(os.path.join(REPO, "custom", "amortized"), namespace="custom")


# ------------------------------------------------------------------------------------------------ inputs
WORDS = {
    "adj": "red blue green yellow wooden metal glass ceramic plastic golden silver tiny huge ancient modern fluffy "
           "shiny rusty striped spotted".split(),
    "obj": "chair table lamp mug teapot robot car boat castle tree flower dog cat owl dragon house vase sofa guitar "
           "helmet shoe backpack clock bicycle statue".split(),
    "ctx": ["", "on a table", "in the grass", "made of lego", "with a hat", "in the snow", "low poly", "on a plate",
            "covered in moss", "3d render"],
}


def make_corpus(path: str, n: int, seed: int = 0) -> Dict[str, List[str]]:
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        a, b = rng.sample(WORDS["adj"], 2)
        p = f"a {a} {b} {rng.choice(WORDS['obj'])} {rng.choice(WORDS['ctx'])}".strip() + f", model {i}"
        prompts.append(p)
    lib = {"train": prompts[: n - 200], "val": prompts[n - 200 : n - 100], "test": prompts[n - 100 :]}
    with open(path, "w") as f:
        json.dump(lib, f)
    return lib


def make_sd_folder(folder: str, tiny: bool = False) -> str:
    """Random SD-2.1-base at full size, with a full-shape text encoder (``tiny``: the tiny test preset)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from threestudio.utils.weights import save_random_stable_diffusion

    if tiny:
        return save_random_stable_diffusion(folder, preset="tiny")

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    save_random_stable_diffusion(folder, preset="sd21-base", dtype=torch.float16, device=dev, text_hidden_size=1024)
    vocab = 514  # the toy tokenizer's; the ids it produces are all < 514
    cfg = CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                         vocab_size=49408, max_position_embeddings=77, hidden_act="gelu", bos_token_id=vocab - 2,
                         eos_token_id=vocab - 1, pad_token_id=vocab - 1, projection_dim=1024)
    with torch.device(dev):
        CLIPTextModel(cfg).save_pretrained(os.path.join(folder, "text_encoder"))
    return folder


def run_stage(args: argparse.Namespace, stage: str, extra: List[str], timeout: int = 400) -> Dict[str, Any]:
    out = os.path.join(args.work, f"{stage}-{len(extra)}-{time.time():.0f}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", stage, "--work", args.work, "--result", out,
           "--encode-prompts", str(args.encode_prompts), "--corpus", str(args.corpus), "--k", str(args.k),
           "--steps", str(args.steps), "--warmup", str(args.warmup), *extra]
    if args.compile:
        cmd.append("--compile")
    if args.tiny:
        cmd.append("--tiny")
    log(f"stage {stage} {' '.join(extra)}")
    r = subprocess.run(cmd, timeout=timeout)
    if r.returncode != 0 or not os.path.isfile(out):
        return {"error": f"stage {stage} failed with exit code {r.returncode}"}
    return json.load(open(out))


# ------------------------------------------------------------------------------------------------ workers
def worker_store(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    load_ext()
    from custom.amortized.prompt_processor import PromptLibraryProcessor

    lib = json.load(open(os.path.join(args.work, "corpus.json")))
    n = args.encode_prompts
    sub = {"train": lib["train"][: n - 2], "val": lib["val"][:1], "test": lib["test"][:1]}
    path = os.path.join(args.work, f"corpus-{n}.json")
    json.dump(sub, open(path, "w"))
    cfg = {"prompt_library": path, "pretrained_model_name_or_path": os.path.join(args.work, "sd"),
           "store_dir": os.path.join(args.work, "stores"), "encode_batch_size": 256, "use_perp_neg": False}
    t = time.perf_counter()
    pp = PromptLibraryProcessor(cfg, view_dependent=False)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    dt = time.perf_counter() - t
    return {"prompts": n, "seconds": dt, "prompts_per_s": n / dt, "bytes": pp.store.nbytes_on_disk(),
            "peak_rss_mb": peak_rss_mb(), "folder": pp.store.folder}


def worker_full_store(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    load_ext()
    from custom.amortized.store import build_store, expected_meta

    lib = json.load(open(os.path.join(args.work, "corpus.json")))
    bs = 1024
    tokens = torch.randn(bs, 77, 1024, generator=torch.Generator().manual_seed(0)).half()  # one random block
    pooled = tokens[:, 0].clone()

    def encode(prompts, on_batch):  # the writer's real path; values random (no model)
        for s in range(0, len(prompts), bs):
            b = len(prompts[s : s + bs])
            on_batch(s, tokens[:b], pooled[:b])

    folder = os.path.join(args.work, "stores", "full-110k")
    t = time.perf_counter()
    build_store(folder, lib, encode, expected_meta("synthetic", "corpus", True, False, ""))
    dt = time.perf_counter() - t
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    return {"prompts": sum(len(v) for v in lib.values()), "seconds": dt, "bytes": size, "peak_rss_mb": peak_rss_mb(),
            "folder": folder}


def worker_reader(args: argparse.Namespace) -> Dict[str, Any]:
    import numpy as np

    load_ext()
    from custom.amortized.library import shard_indices
    from custom.amortized.store import EmbeddingStore

    base = peak_rss_mb()
    lib = json.load(open(os.path.join(args.work, "corpus.json")))
    store = EmbeddingStore(os.path.join(args.work, "stores", "full-110k"))
    ids = shard_indices(len(lib["train"]), args.rank, args.world)
    rng = np.random.default_rng(args.rank)
    t = time.perf_counter()
    for _ in range(args.steps * 10):
        rows = store.row("train", rng.choice(ids, size=max(args.k, 8), replace=False))
        pooled, tokens = store.pooled(rows), store.tokens(rows)
    dt = time.perf_counter() - t
    return {"rank": args.rank, "world": args.world, "shard": len(ids), "batches": args.steps * 10,
            "ms_per_batch": dt * 1e3 / (args.steps * 10), "peak_rss_mb": peak_rss_mb(),
            "rss_before_open_mb": base, "batch_mb": (pooled.numel() + tokens.numel()) * 4 / 2**20}


GEN_RECIPES = {"hyper-ingp": "asd-sd-hyper-ingp-mg15.yaml", "3dconv-net": "asd-sd-3dconv-df415.yaml",
               "triplane-transformer": "asd-sd-3dconv-df415.yaml"}


def _train_rank(rank: int, world: int, args: argparse.Namespace, result_path: str) -> None:
    import torch
    import torch.distributed as dist
    from omegaconf import OmegaConf

    load_ext()
    import threestudio
    from threestudio.utils.config import load_config

    cuda = torch.cuda.is_available()
    if world > 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    if cuda:
        torch.cuda.set_device(rank)
    torch.manual_seed(rank)
    gen = args.generator
    recipe = os.path.join(REPO, "custom", "amortized", "configs", GEN_RECIPES[gen])
    lib = os.path.join(args.work, "corpus-train-bench.json")
    cfg = load_config(recipe, cli_args=[f"system.prompt_processor.prompt_library={lib}",
                                        f"system.guidance.pretrained_model_name_or_path={os.path.join(args.work, 'sd')}",
                                        f"system.prompt_processor.store_dir={os.path.join(args.work, 'stores')}",
                                        f"system.guidance.compile={bool(args.compile)}",
                                        f"data.prompts_per_step={args.k}", f"exp_root_dir={args.work}/runs"])
    if gen == "triplane-transformer":
        cfg.system.geometry_type = gen
        cfg.system.geometry = OmegaConf.create({"radius": 2.0, "sphere_bias": 0.8})
    if args.tiny:  # CPU smoke run: tiny generators and renders
        tiny = {"hyper-ingp": {"pos_encoding_config": {"n_levels": 4, "log2_hashmap_size": 10, "backend": "torch"}},
                "3dconv-net": {"resolution": 16, "channels": [16, 16, 8], "out_channels": 8,
                               "bias_volume_max_res": 16},
                "triplane-transformer": {"width": 32, "n_blocks": 1, "n_heads": 4, "plane_tokens": 4}}[gen]
        cfg.system.geometry = OmegaConf.merge(cfg.system.geometry, {"text_dim": 32, **tiny})
        if cfg.system.background_type == "amortized-text-environment-map":
            cfg.system.background = OmegaConf.merge(cfg.system.background, {
                "text_dim": 32, "dir_encoding_config": {"n_levels": 2, "log2_hashmap_size": 8, "backend": "torch"}})
        cfg.data.height = cfg.data.width = 16
        cfg.system.renderer.n_proposal, cfg.system.renderer.n_importance = 8, 8
        cfg.system.guidance.image_size = 64
    cfg.data.rank, cfg.data.world_size = rank, world
    dm = threestudio.find(cfg.data_type, "data")(cfg.data)
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    system = threestudio.find(cfg.system_type, "system")(cfg.system).to(dev)
    system.prepare_objective()
    opt = system.configure_optimizers()["optimizer"]
    model = system
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(system, device_ids=[rank] if cuda else None)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step(i: int) -> None:
        system.do_update_step(0, i)
        batch = dm.draw_train_batch(dev)
        out = model(batch)
        g = system.guidance_terms(out, batch)
        terms = {k[5:]: v for k, v in g.items() if k.startswith("loss_")}
        terms.update(system.regularizers(out))
        loss = sum(system._lambda(n, 1.0 if n == "asd" else 0.0) * v for n, v in terms.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(args.warmup):
        step(i)
    sync()
    if world > 1:
        dist.barrier()
    t = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    sync()
    dt = time.perf_counter() - t
    res = {"generator": gen, "world": world, "k": args.k, "steps": args.steps, "ms_per_step": dt * 1e3 / args.steps,
           "prompts_per_s": world * args.k * args.steps / dt, "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else 0.0,
           "params_m": sum(p.numel() for p in system.geometry.parameters()) / 1e6, "peak_rss_mb": peak_rss_mb()}
    if rank == 0:
        json.dump(res, open(result_path, "w"))
    if world > 1:
        dist.destroy_process_group()


def worker_train(args: argparse.Namespace) -> Dict[str, Any]:
    import torch.multiprocessing as mp

    path = args.result + ".rank0"
    if args.gpus > 1:
        mp.spawn(_train_rank, args=(args.gpus, args, path), nprocs=args.gpus)
    else:
        _train_rank(0, 1, args, path)
    return json.load(open(path))


# ------------------------------------------------------------------------------------------------ driver
def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--stages", default="store,full-store,readers,train")
    ap.add_argument("--corpus", type=int, default=110_000)
    ap.add_argument("--encode-prompts", type=int, default=20_000, help="prompts encoded with the real text encoder")
    ap.add_argument("--ranks", type=int, default=2, help="simulated DDP ranks for the readers")
    ap.add_argument("--generators", default="hyper-ingp,3dconv-net,triplane-transformer")
    ap.add_argument("--k", type=int, default=1, help="prompts per step per rank")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--gpus", type=int, default=1, help="ranks for the training throughput (DDP if > 1)")
    ap.add_argument("--compile", action="store_true", help="compile the guidance (CUDA graphs)")
    ap.add_argument("--tiny", action="store_true", help="tiny random models (a CPU smoke run of the script)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--generator", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        fn = {"store": worker_store, "full-store": worker_full_store, "reader": worker_reader,
              "train": worker_train}[args.worker]
        res = fn(args)
        json.dump(res, open(args.result, "w"))
        return 0

    args.work = args.work or tempfile.mkdtemp(prefix="bench-amortized-")
    os.makedirs(args.work, exist_ok=True)
    os.environ.setdefault("THREESTUDIO_CACHE", os.path.join(args.work, "cache"))
    stages = args.stages.split(",")
    results: Dict[str, Any] = {"corpus_prompts": args.corpus}
    try:
        import torch

        results["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover
        pass
    lib = make_corpus(os.path.join(args.work, "corpus.json"), args.corpus)
    json.dump({"train": lib["train"][:512], "val": lib["val"][:2], "test": lib["test"][:2]},
              open(os.path.join(args.work, "corpus-train-bench.json"), "w"))
    if {"store", "train"} & set(stages) and not os.path.isdir(os.path.join(args.work, "sd")):
        log("writing the random full-size SD-2.1 folder")
        make_sd_folder(os.path.join(args.work, "sd"), tiny=args.tiny)
    def save() -> None:  # after every stage, so a run cut short keeps what it measured
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)

    L, D, n = 77, 1024, args.corpus
    results["formula_bytes_110k"] = {"tokens+pooled fp16": n * (L * D + D) * 2,
                                     "with view-dependent variants fp16": n * (5 * L * D + D) * 2,
                                     "authors' cache (5 local + 5 global fp32 per prompt)": n * 5 * (L * D + D) * 4}
    if "store" in stages:
        r = run_stage(args, "store", [])
        if "bytes" in r:
            r["extrapolated_110k_seconds"] = r["seconds"] * n / r["prompts"]
            r["extrapolated_110k_bytes"] = r["bytes"] * n / r["prompts"]
        results["store_real_encoder"] = r
        save()
    if "full-store" in stages:
        results["store_full_110k_synthetic"] = run_stage(args, "full-store", [])
        save()
    if "readers" in stages:
        results["readers"] = [run_stage(args, "reader", ["--rank", str(r), "--world", str(args.ranks)])
                              for r in range(args.ranks)]
        results["authors_ram_per_rank_gb"] = n * 5 * (L * D + D) * 4 / args.ranks / 1e9
        save()
    if "train" in stages:
        results["train"] = []
        for gen in args.generators.split(","):
            results["train"].append(run_stage(args, "train", ["--generator", gen, "--gpus", "1"]))
            if args.gpus > 1:
                r = run_stage(args, "train", ["--generator", gen, "--gpus", str(args.gpus)])
                one = results["train"][-1].get("prompts_per_s")
                if one and "prompts_per_s" in r:
                    r["scaling_vs_1gpu"] = r["prompts_per_s"] / one
                results["train"].append(r)
            save()
    print_table(results)
    save()
    return 0


def print_table(res: Dict[str, Any]) -> None:
    gb = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
    print("\n| what | value |\n|---|---|")
    print(f"| device | {res.get('device')} |")
    for k, v in res["formula_bytes_110k"].items():
        print(f"| store size at {res['corpus_prompts']} prompts, {k} (from shapes) | {gb(v)} |")
    s = res.get("store_real_encoder", {})
    if "bytes" in s:
        print(f"| real encoder: {s['prompts']} prompts encoded + written | {s['seconds']:.1f} s "
              f"({s['prompts_per_s']:.0f} prompts/s), {gb(s['bytes'])} on disk, builder peak RSS "
              f"{s['peak_rss_mb']:.0f} MB |")
        print(f"| extrapolated to {res['corpus_prompts']} prompts | {s['extrapolated_110k_seconds']:.0f} s, "
              f"{gb(s['extrapolated_110k_bytes'])} |")
    f = res.get("store_full_110k_synthetic", {})
    if "bytes" in f:
        print(f"| full {f['prompts']}-prompt store (synthetic values, same writer) | {gb(f['bytes'])} on disk, "
              f"written in {f['seconds']:.1f} s, builder peak RSS {f['peak_rss_mb']:.0f} MB |")
    for r in res.get("readers", []):
        if "peak_rss_mb" in r:
            print(f"| reader rank {r['rank']}/{r['world']} ({r['shard']} prompts): peak RSS | "
                  f"{r['peak_rss_mb']:.0f} MB ({r['ms_per_batch']:.2f} ms per batch) |")
    if "authors_ram_per_rank_gb" in res:
        print(f"| baseline: the authors' in-RAM cache per rank (same ranks) | {res['authors_ram_per_rank_gb']:.1f} GB |")
    for t in res.get("train", []):
        if "prompts_per_s" in t:
            extra = f", scaling {t['scaling_vs_1gpu']:.2f}x" if "scaling_vs_1gpu" in t else ""
            print(f"| train {t['generator']} ({t['params_m']:.1f}M params), {t['world']} GPU, k={t['k']} | "
                  f"{t['prompts_per_s']:.2f} prompts/s ({t['ms_per_step']:.0f} ms/step, peak "
                  f"{t['peak_gpu_gb']:.1f} GB){extra} |")
        else:
            print(f"| train | {t} |")


if __name__ == "__main__":
    sys.exit(main())
