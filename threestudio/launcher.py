"""The command line behind ``launch.py``.

    python launch.py --config configs/quickstart.yaml --train [--gpu 0,1] [--resume PATH|last] [overrides...]

Order of work: parse flags, import extensions (``custom/*`` and ``--extensions``), load and validate the whole config
(every problem at once, before any module is built or a GPU touched), create the trial folder (rank 0), build the
data module and system, then train / validate / test / export with Lightning.

Exit codes: 0 ok, 1 run failed, 2 bad config or flags, 3 an extension failed to import.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from typing import Any, List, Optional, Sequence

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_EXTENSION = 0, 1, 2, 3
TIMESTAMP_ENV = "THREESTUDIO_TRIAL_TIMESTAMP"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="launch.py",
        description="Train, evaluate or export a threestudio recipe. Anything after the flags is a config override "
        "in dotlist form, e.g. system.prompt_processor.prompt='a red car' trainer.max_steps=5000.",
    )
    p.add_argument("--config", help="recipe YAML (optional with --resume: the trial's own config is used)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true", help="train, then run the test pass if the system has one")
    mode.add_argument("--validate", action="store_true", help="run the validation pass")
    mode.add_argument("--test", action="store_true", help="run the test pass (turntable video)")
    mode.add_argument("--export", action="store_true", help="export meshes / assets")
    p.add_argument("--gpu", default=None,
                   help="GPU ids, e.g. 0 or 0,1 (more than one runs DDP). Default: GPU 0 if CUDA is available. "
                   "Ignored when CUDA_VISIBLE_DEVICES is already set (all visible GPUs are used).")
    p.add_argument("--resume", default=None, metavar="PATH|last",
                   help="a checkpoint, a trial folder, or 'last' (newest trial of this recipe's name and tag). "
                   "Training continues in that trial folder.")
    p.add_argument("--seed", type=int, default=None, help="random seed (each DDP rank uses seed + rank)")
    p.add_argument("--verbose", action="store_true", help="DEBUG logging")
    p.add_argument("--extensions", action="append", default=[], metavar="DIR",
                   help="an extension folder to import (repeatable); custom/* is always imported")
    return p


def _mode(args: argparse.Namespace) -> str:
    for m in ("train", "validate", "test", "export"):
        if getattr(args, m):
            return m
    raise AssertionError


def _setup_devices(gpu: Optional[str]) -> int:
    """Set CUDA_VISIBLE_DEVICES from --gpu (unless already set) and return the number of GPUs to use."""
    if gpu is not None:
        ids = [g.strip() for g in str(gpu).split(",") if g.strip()]
        if not all(i.isdigit() for i in ids):
            raise ValueError(f"--gpu takes comma-separated GPU ids such as 0 or 0,1; got {gpu!r}")
        if "CUDA_VISIBLE_DEVICES" not in os.environ:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
            return len(ids)
    import torch

    if not torch.cuda.is_available():
        return 0
    if "CUDA_VISIBLE_DEVICES" in os.environ and os.environ["CUDA_VISIBLE_DEVICES"].strip():
        return torch.cuda.device_count()
    return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    from threestudio.utils.log import error, get_rank, info, setup_logging, warn

    setup_logging(args.verbose)
    rank = get_rank()
    try:
        n_gpus = _setup_devices(args.gpu)
    except ValueError as e:
        error(str(e))
        return EXIT_CONFIG

    from threestudio.utils.extensions import ExtensionImportError, load_extension_folders

    t0 = time.time()
    try:
        load_extension_folders(args.extensions, include_custom=True)
    except ExtensionImportError as e:
        error(str(e))
        return EXIT_EXTENSION

    from threestudio.utils.config import ConfigError, ConfigIssue, dump_config, load_config
    from threestudio.utils.trials import CKPT_DIR, CONFIG_DIR, resolve_checkpoint, trial_of_checkpoint

    config_path = args.config
    resume_ckpt: Optional[str] = None
    try:
        if config_path is None:
            if args.resume is None or args.resume == "last":
                raise ConfigError([ConfigIssue("--config", "required (it may be left out only with --resume PATH, "
                                               "to reuse that trial's config)")])
            resume_ckpt = resolve_checkpoint(args.resume)
            config_path = os.path.join(trial_of_checkpoint(resume_ckpt), CONFIG_DIR, "raw.yaml")
        overrides = list(extras)
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        cfg, raw = load_config(config_path, cli_args=overrides, n_gpus=max(n_gpus, 1),
                               timestamp=os.environ.get(TIMESTAMP_ENV), return_raw=True)
        if args.resume is not None and resume_ckpt is None:
            resume_ckpt = resolve_checkpoint(args.resume, exp_dir=cfg.exp_dir, tag=cfg.tag or None)
    except ConfigError as e:
        error(str(e))
        return EXIT_CONFIG
    os.environ[TIMESTAMP_ENV] = cfg.timestamp or ""

    if resume_ckpt is not None:
        trial = trial_of_checkpoint(resume_ckpt)
        cfg.trial_dir = trial
        cfg.trial_name = os.path.basename(trial)
        cfg.exp_dir = os.path.dirname(trial)
        cfg.resume = resume_ckpt
        info(f"Resuming from {resume_ckpt}")

    info(f"Config {config_path} loaded and validated in {time.time() - t0:.1f}s; trial folder: {cfg.trial_dir}")
    if rank == 0:
        _write_trial_files(cfg, raw, argv, resume_ckpt is not None, dump_config)
    try:
        return _run(cfg, _mode(args), n_gpus, resume_ckpt)
    except ConfigError as e:
        error(str(e))
        return EXIT_CONFIG
    except KeyboardInterrupt:
        warn("Interrupted.")
        return EXIT_FAIL


def _write_trial_files(cfg: Any, raw: Any, argv: Optional[Sequence[str]], resumed: bool, dump_config: Any) -> None:
    from threestudio.utils.saving import atomic_write_text

    cdir = os.path.join(cfg.trial_dir, "configs")
    os.makedirs(cdir, exist_ok=True)
    for name, conf in (("raw.yaml", raw), ("parsed.yaml", cfg)):
        path = os.path.join(cdir, name)
        if resumed and os.path.isfile(path):
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            os.replace(path, os.path.join(cdir, f"{name[:-5]}@{stamp}.yaml"))
        dump_config(path, conf)
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, *(sys.argv if argv is None else ["launch.py", *argv])])
    with open(os.path.join(cfg.trial_dir, "cmd.txt"), "a", encoding="utf-8") as f:
        f.write(cmd + "\n")


def _quiet_lightning() -> None:
    """Drop Lightning messages that are noise for our users (advertising, internal deprecations)."""
    import logging
    import warnings

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "litlogger" not in record.getMessage()

    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_Drop())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")


def set_matmul_precision(cfg: Any, n_gpus: int) -> None:
    """``float32_matmul_precision`` for GPU runs (default "high": TF32 tensor cores for float32 matrix products);
    CPU-only runs keep torch's default."""
    if n_gpus > 0:
        import torch

        torch.set_float32_matmul_precision(str(cfg.get("float32_matmul_precision", "high")))


def _run(cfg: Any, mode: str, n_gpus: int, resume_ckpt: Optional[str]) -> int:
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    import threestudio
    from threestudio.utils.callbacks import CodeSnapshotCallback, LearningRates, ProgressBar
    from threestudio.utils.checkpoint import AtomicCheckpointIO
    from threestudio.utils.log import get_rank, info, warn

    _quiet_lightning()
    rank = get_rank()
    pl.seed_everything(int(cfg.seed) + rank, workers=True, verbose=False)
    set_matmul_precision(cfg, n_gpus)

    dm = threestudio.find(cfg.data_type, "data", "data_type")(cfg.data)
    system = threestudio.find(cfg.system_type, "system", "system_type")(cfg.system, resumed=resume_ckpt is not None)
    save_dir = os.path.join(cfg.trial_dir, "save")
    system.set_save_dir(save_dir)

    if n_gpus == 0:
        info("No CUDA GPU available: running on CPU (fine for tiny models and the quick start; slow otherwise).")
        accel: dict = {"accelerator": "cpu", "devices": 1}
    else:
        accel = {"accelerator": "gpu", "devices": n_gpus}
        if n_gpus > 1:
            # training batches come from each rank's own generator; evaluation renders every view on every rank
            # (rank 0 writes them), so no view is missing from videos and metrics
            accel["strategy"] = "ddp"
            accel["use_distributed_sampler"] = False
    callbacks: List[Any] = [ProgressBar()] if cfg.trainer.get("enable_progress_bar", True) else []
    loggers: List[Any] = []
    if mode == "train":
        ckpt_kwargs = {"save_last": True, "save_top_k": -1}
        max_steps = cfg.trainer.get("max_steps", -1)
        if max_steps and max_steps > 0:
            ckpt_kwargs["every_n_train_steps"] = max_steps
        ckpt_kwargs.update(dict(cfg.checkpoint))
        callbacks += [
            ModelCheckpoint(dirpath=os.path.join(cfg.trial_dir, "ckpts"), **ckpt_kwargs),
            OnExceptionCheckpoint(dirpath=os.path.join(cfg.trial_dir, "ckpts"), filename="interrupted"),
            LearningRates(),
            CodeSnapshotCallback(os.path.join(cfg.trial_dir, "code")),
        ]
        loggers = [TensorBoardLogger(cfg.trial_dir, name="tb_logs", version=""),
                   CSVLogger(cfg.trial_dir, name="csv_logs", version="")]
    trainer_kwargs = {"num_sanity_val_steps": 0, "inference_mode": False, "log_every_n_steps": 10, **accel}
    trainer_kwargs.update(dict(cfg.trainer))
    trainer = pl.Trainer(callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()],
                         **trainer_kwargs)

    if mode == "train":
        trainer.fit(system, datamodule=dm, ckpt_path=resume_ckpt)
        if trainer.interrupted:
            warn("Training was interrupted; the last checkpoint is in ckpts/. Skipping the test pass.")
            return 1
        if _defines(system, "test_step") and hasattr(dm, "test_dataloader"):
            last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
            trainer.test(system, datamodule=dm, ckpt_path=last or None)
        if getattr(system.cfg, "export_after_train", False):
            trainer.predict(system, datamodule=dm, return_predictions=False)
        return 0
    if resume_ckpt is None:
        warn(f"--{mode} without --resume: the system's weights are freshly initialised.")
    else:
        ckpt = torch.load(resume_ckpt, map_location="cpu", weights_only=False)
        system.set_resume_status(int(ckpt.get("epoch", 0)), int(ckpt.get("global_step", 0)))
        del ckpt
    if mode == "validate":
        trainer.validate(system, datamodule=dm, ckpt_path=resume_ckpt)
    elif mode == "test":
        trainer.test(system, datamodule=dm, ckpt_path=resume_ckpt)
    else:
        trainer.predict(system, datamodule=dm, ckpt_path=resume_ckpt, return_predictions=False)
    return 0


def _defines(obj: Any, method: str) -> bool:
    import pytorch_lightning as pl

    return getattr(type(obj), method, None) is not getattr(pl.LightningModule, method, None)
