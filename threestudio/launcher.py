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
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGTERM: 143)
TIMESTAMP_ENV = "THREESTUDIO_TRIAL_TIMESTAMP"
TRIAL_DIR_ENV = "THREESTUDIO_TRIAL_DIR"  # the trial folder rank 0 created, for DDP ranks > 0


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
    p.add_argument("--cpu-ranks", type=int, default=None, metavar="N",
                   help="run N DDP processes on the CPU (gloo backend): the multi-GPU code path without GPUs, for "
                   "tests and small runs")
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


def _select_gpus(gpu: Optional[str]) -> Optional[List[str]]:
    """Check --gpu and set CUDA_VISIBLE_DEVICES from it unless already set, without importing torch (before
    anything can initialise CUDA). Returns the ids it set, else None."""
    if gpu is None:
        return None
    ids = [g.strip() for g in str(gpu).split(",") if g.strip()]
    if not ids or not all(i.isdigit() for i in ids):
        raise ValueError(f"--gpu takes comma-separated GPU ids such as 0 or 0,1; got {gpu!r}")
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return None
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    return ids


def _count_gpus(gpu: Optional[str], selected: Optional[List[str]]) -> int:
    """The number of GPUs to use (imports torch): those --gpu selected (``selected``, from :func:`_select_gpus`),
    else every visible one."""
    import torch

    if selected is not None:
        if not torch.cuda.is_available():
            raise ValueError(f"--gpu {gpu}: this machine has no usable CUDA GPU (torch.cuda.is_available() is "
                             f"False). Leave out --gpu to train on the CPU; for several processes on the CPU "
                             f"use --cpu-ranks N.")
        return len(selected)
    if not torch.cuda.is_available():
        return 0
    if "CUDA_VISIBLE_DEVICES" in os.environ and os.environ["CUDA_VISIBLE_DEVICES"].strip():
        return torch.cuda.device_count()
    return 1


def _setup_devices(gpu: Optional[str]) -> int:
    """Set CUDA_VISIBLE_DEVICES from --gpu (unless already set) and return the number of GPUs to use. :func:`main`
    does the two halves apart: the first before loading the config, the second (torch) once it is validated."""
    return _count_gpus(gpu, _select_gpus(gpu))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    from threestudio.utils.log import error, get_rank, info, setup_logging

    setup_logging(args.verbose)
    rank = get_rank()
    try:  # the device flags' syntax; the devices themselves are set up once the config is validated
        if args.cpu_ranks is not None and (args.gpu is not None or args.cpu_ranks < 1):
            raise ValueError(f"--cpu-ranks {args.cpu_ranks}: give a number of processes >= 1, and no --gpu")
        selected = _select_gpus(args.gpu)
    except ValueError as e:
        error(str(e))
        return EXIT_CONFIG
    # the config's n_gpus (the number of ranks) is known without torch from --cpu-ranks or --gpu; else it is 1 unless
    # the device set-up after validation finds several GPUs: then set_top_level sets it (and what interpolates it)
    n_ranks = args.cpu_ranks or (len(selected) if selected else 1)

    from threestudio.utils.extensions import ExtensionImportError, load_extension_folders

    t0 = time.time()
    try:
        load_extension_folders(args.extensions, include_custom=True)
    except ExtensionImportError as e:
        error(str(e))
        return EXIT_EXTENSION

    from threestudio.utils.config import ConfigError, ConfigIssue, dump_config, load_config, set_top_level
    from threestudio.utils.trials import CONFIG_DIR, is_trial_checkpoint, resolve_checkpoint, trial_of_checkpoint

    config_path = args.config
    resume_ckpt: Optional[str] = None
    try:
        if config_path is None:
            if args.resume is None or args.resume == "last":
                raise ConfigError([ConfigIssue("--config", "required (it may be left out only with --resume PATH, "
                                               "to reuse that trial's config)")])
            resume_ckpt = resolve_checkpoint(args.resume)
            if not is_trial_checkpoint(resume_ckpt):
                raise ConfigError([ConfigIssue("--config", f"required: {resume_ckpt} is not inside a trial folder "
                                               "(<trial>/ckpts/), so there is no trial config to reuse",
                                               "", "pass the recipe it was trained with")])
            config_path = os.path.join(trial_of_checkpoint(resume_ckpt), CONFIG_DIR, "raw.yaml")
        overrides = list(extras)
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        cfg, raw = load_config(config_path, cli_args=overrides, n_gpus=n_ranks,
                               timestamp=os.environ.get(TIMESTAMP_ENV), return_raw=True)
        if args.resume is not None and resume_ckpt is None:
            resume_ckpt = resolve_checkpoint(args.resume, exp_dir=cfg.exp_dir, tag=cfg.tag or None)
    except ConfigError as e:
        error(str(e))
        return EXIT_CONFIG
    os.environ[TIMESTAMP_ENV] = cfg.timestamp or ""

    run = _RunPlan(cfg, raw, argv, resume_ckpt, _mode(args))
    if resume_ckpt is not None:
        run.place_resume()
        info(f"Resuming from {resume_ckpt}")
    elif rank != 0 and os.environ.get(TRIAL_DIR_ENV):  # DDP ranks > 0: the folder rank 0 created
        run.set_trial(os.environ[TRIAL_DIR_ENV])

    info(f"Config {config_path} loaded and validated in {time.time() - t0:.1f}s; trial folder: {cfg.trial_dir}")
    try:
        n_gpus = 0 if args.cpu_ranks is not None else _count_gpus(args.gpu, selected)
    except ValueError as e:
        error(str(e))
        return EXIT_CONFIG
    if max(n_gpus, 1) != n_ranks and args.cpu_ranks is None:
        before = cfg.trial_dir
        fixed = resume_ckpt is not None or (rank != 0 and bool(os.environ.get(TRIAL_DIR_ENV)))
        set_top_level(cfg, raw, trial_paths=not fixed, n_gpus=max(n_gpus, 1))
        if cfg.trial_dir != before:
            info(f"{n_gpus} GPUs found: n_gpus={n_gpus}, trial folder: {cfg.trial_dir}")
    rc: Optional[int] = None
    try:
        rc = _guarded_run(run, args, n_gpus, dump_config)
        return rc
    finally:
        run.record_status(rc)  # None: an exception is on its way (a crash)


def _guarded_run(run: "_RunPlan", args: argparse.Namespace, n_gpus: int, dump_config: Any) -> int:
    """``_run`` with the framework's own errors turned into one message and an exit code."""
    from threestudio.ops.marching_cubes import NoSurfaceError
    from threestudio.registry import RegistryImportError
    from threestudio.utils.log import error, warn

    cfg = run.cfg
    try:
        return _run(run, n_gpus, dump_config, cpu_ranks=args.cpu_ranks or 0)
    except _input_errors() as e:  # the user's data, weights, checkpoints or settings: one message, no traceback
        error(str(e) if not args.verbose else f"{e}\n{_traceback()}")
        run.discard_if_empty()
        return EXIT_CONFIG
    except RegistryImportError as e:  # an extension module that fails to import when its name is first built
        error(str(e) if not args.verbose else f"{e}\n{_traceback()}")
        run.discard_if_empty()
        return EXIT_EXTENSION
    except NoSurfaceError as e:  # raised by an export; training (if any) is saved
        error(f"Export failed: {e} The trained weights are in {os.path.join(cfg.trial_dir, 'ckpts')}; export "
              f"again with `python launch.py --export --resume {cfg.trial_dir} "
              f"system.geometry.isosurface_threshold=auto` (or train longer).")
        return EXIT_FAIL
    except KeyboardInterrupt:
        warn("Interrupted before training started or after it ended: nothing new was saved.")
        run.discard_if_empty()
        return EXIT_INTERRUPTED
    except OSError as e:
        from threestudio.utils.run_control import describe_os_error

        described = describe_os_error(e)
        if described is None:
            raise
        msg, code = described
        error(msg if not args.verbose else f"{msg}\n{_traceback()}")
        run.discard_if_empty()
        return code


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _host() -> str:
    import socket

    return socket.gethostname()


def _input_errors() -> tuple:
    """Exceptions that mean bad input (exit 2, the message alone), not a crash."""
    from threestudio.data.multiview import DatasetError
    from threestudio.models.geometry.gaussian_splatting import GaussianInitError
    from threestudio.utils.config import ConfigError
    from threestudio.utils.imports import MissingDependencyError
    from threestudio.utils.schedule import ScheduleError

    return (ConfigError, DatasetError, GaussianInitError, MissingDependencyError, ScheduleError)


def _traceback() -> str:
    import traceback

    return traceback.format_exc()


class _RunPlan:
    """Where a run writes (its trial folder) and what it may change there; decides branches for resumes."""

    def __init__(self, cfg: Any, raw: Any, argv: Optional[Sequence[str]], resume_ckpt: Optional[str],
                 mode: str) -> None:
        self.cfg, self.raw, self.argv, self.resume_ckpt, self.mode = cfg, raw, argv, resume_ckpt, mode
        self.created = False  # this run created its trial folder
        self.new_trial = resume_ckpt is None
        self.resumed_from: Optional[str] = None  # a checkpoint continued in a new trial
        self.marked = False  # status.json says "running" (this run trains in the folder)

    def set_trial(self, trial: str) -> None:
        self.cfg.trial_dir = trial
        self.cfg.trial_name = os.path.basename(trial)
        self.cfg.exp_dir = os.path.dirname(trial)

    def place_resume(self) -> None:
        """Continue in the checkpoint's trial, unless it is outside a trial folder or older than the trial's
        newest checkpoint: then a new trial records where it came from (nothing newer is overwritten)."""
        from threestudio.utils.trials import is_trial_checkpoint, newer_checkpoint, trial_of_checkpoint

        ckpt = self.resume_ckpt
        assert ckpt is not None
        if self.mode == "train" and (not is_trial_checkpoint(ckpt) or newer_checkpoint(ckpt) is not None):
            self.new_trial = True
            self.resumed_from = ckpt
            if is_trial_checkpoint(ckpt):
                self.cfg.trial_name = os.path.basename(trial_of_checkpoint(ckpt)) + "-branch"
                self.cfg.trial_dir = os.path.join(self.cfg.exp_dir, self.cfg.trial_name)
            return
        if is_trial_checkpoint(ckpt):
            self.set_trial(trial_of_checkpoint(ckpt))
        # --test/--export of a checkpoint outside a trial: outputs go to a new trial folder of this recipe
        self.new_trial = not is_trial_checkpoint(ckpt)
        self.cfg.resume = ckpt

    def prepare_folder(self) -> None:
        """Rank 0: create a new trial folder atomically (a suffix on a clash) and tell DDP ranks its name; clean
        temporaries a killed write left in a resumed one."""
        from threestudio.utils.run_control import create_trial_dir, remove_stale_temporaries

        if self.new_trial:
            self.set_trial(create_trial_dir(self.cfg.trial_dir))
            self.created = True
        os.environ[TRIAL_DIR_ENV] = self.cfg.trial_dir
        for sub in ("ckpts", "save", "configs"):
            remove_stale_temporaries(os.path.join(self.cfg.trial_dir, sub), recursive=sub == "save")

    def write_trial_files(self, dump_config: Any) -> None:
        from threestudio.utils.saving import atomic_write_text

        cfg = self.cfg
        cdir = os.path.join(cfg.trial_dir, "configs")
        os.makedirs(cdir, exist_ok=True)
        for name, conf in (("raw.yaml", self.raw), ("parsed.yaml", cfg)):
            path = os.path.join(cdir, name)
            if os.path.isfile(path):  # a resume: keep the previous one
                stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
                os.replace(path, os.path.join(cdir, f"{name[:-5]}@{stamp}.yaml"))
            dump_config(path, conf)
        cmd = " ".join(shlex.quote(a) for a in [sys.executable, *(sys.argv if self.argv is None
                                                                   else ["launch.py", *self.argv])])
        with open(os.path.join(cfg.trial_dir, "cmd.txt"), "a", encoding="utf-8") as f:
            f.write(cmd + "\n")
        if self.resumed_from:
            atomic_write_text(os.path.join(cfg.trial_dir, "resumed_from.txt"), self.resumed_from + "\n")

    def record_status(self, rc: Optional[int]) -> None:
        """``status.json`` of a training run (rank 0): running while it trains, then finished / interrupted /
        failed with the exit code (read by the gallery)."""
        from threestudio.utils.log import get_rank

        trial = self.cfg.trial_dir
        if not self.marked or get_rank() != 0 or not os.path.isdir(trial):
            return  # a run that never started training (a refused resume, say) leaves the trial as it was
        status = {0: "finished", EXIT_INTERRUPTED: "interrupted", 143: "interrupted"}.get(rc, "failed") \
            if rc is not None else "failed"
        self._write_status({"status": status, "exit_code": rc, "ended": _now()})

    def mark_running(self) -> None:
        self.marked = True
        self._write_status({"status": "running", "pid": os.getpid(), "host": _host(), "started": _now(),
                            "ended": None, "exit_code": None})

    def _write_status(self, update: dict) -> None:
        import json

        from threestudio.utils.saving import atomic_write_text

        path = os.path.join(self.cfg.trial_dir, "status.json")
        current: dict = {}
        try:
            with open(path, encoding="utf-8") as f:
                current = json.load(f)
        except (OSError, ValueError):
            pass
        current.update(update)
        try:
            atomic_write_text(path, json.dumps(current, indent=1))
        except OSError:  # a full disk or a vanished folder must not hide the run's own outcome
            pass

    def discard_if_empty(self) -> None:
        """A training run that created its trial folder and saved no checkpoint leaves nothing behind."""
        from threestudio.utils.log import get_rank

        trial = self.cfg.trial_dir
        if get_rank() != 0 or not self.created or self.mode != "train" or not os.path.isdir(trial):
            return
        ckpts = os.path.join(trial, "ckpts")
        if os.path.isdir(ckpts) and any(f.endswith(".ckpt") for f in os.listdir(ckpts)):
            return
        import shutil

        shutil.rmtree(trial, ignore_errors=True)


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
    # frozen guidance models, EMA copies and teachers are kept in eval mode on purpose
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def set_matmul_precision(cfg: Any, n_gpus: int) -> None:
    """``float32_matmul_precision`` for GPU runs (default "high": TF32 tensor cores for float32 matrix products);
    CPU-only runs keep torch's default."""
    if n_gpus > 0:
        import torch

        torch.set_float32_matmul_precision(str(cfg.get("float32_matmul_precision", "high")))


def _run(run: "_RunPlan", n_gpus: int, dump_config: Any, cpu_ranks: int = 0) -> int:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger

    import threestudio
    from threestudio.utils.callbacks import CodeSnapshotCallback, LearningRates, ProgressBar
    from threestudio.utils.checkpoint import AtomicCheckpointIO
    from threestudio.utils.csv_log import ResumableCSVLogger
    from threestudio.utils.log import get_rank, info, warn
    from threestudio.utils.run_control import (
        GracefulStop,
        RunInfo,
        StopSignals,
        check_checkpoint_fits,
        inspect_checkpoint,
    )

    cfg, mode, resume_ckpt = run.cfg, run.mode, run.resume_ckpt
    _quiet_lightning()
    rank = get_rank()
    pl.seed_everything(int(cfg.seed) + rank, workers=True, verbose=False)
    set_matmul_precision(cfg, n_gpus)

    dm = threestudio.find(cfg.data_type, "data", "data_type")(cfg.data)
    system = threestudio.find(cfg.system_type, "system", "system_type")(cfg.system, resumed=resume_ckpt is not None)
    ckpt_meta: Optional[dict] = None
    if resume_ckpt is not None:  # checked before anything in the trial folder changes
        ckpt = inspect_checkpoint(resume_ckpt)
        check_checkpoint_fits(ckpt, resume_ckpt, system, str(cfg.system_type), str(cfg.name))
        ckpt_meta = {"epoch": int(ckpt.get("epoch", 0)), "global_step": int(ckpt.get("global_step", 0))}
        del ckpt
    if rank == 0:
        run.prepare_folder()
        run.write_trial_files(dump_config)
        if mode == "train":
            run.mark_running()
    save_dir = os.path.join(cfg.trial_dir, "save")
    system.set_save_dir(save_dir)

    if cpu_ranks > 1:
        info(f"Running {cpu_ranks} DDP processes on the CPU (gloo).")
        accel: dict = {"accelerator": "cpu", "devices": cpu_ranks, "strategy": "ddp", "use_distributed_sampler": False}
    elif n_gpus == 0:
        info("No CUDA GPU available: running on CPU (fine for tiny models and the quick start; slow otherwise).")
        accel = {"accelerator": "cpu", "devices": 1}
    else:
        accel = {"accelerator": "gpu", "devices": n_gpus}
        if n_gpus > 1:
            # training batches come from each rank's own generator; evaluation renders every view on every rank
            # (rank 0 writes them), so no view is missing from videos and metrics
            accel["strategy"] = "ddp"
            accel["use_distributed_sampler"] = False
    callbacks: List[Any] = [ProgressBar()] if cfg.trainer.get("enable_progress_bar", True) else []
    loggers: List[Any] = []
    signals = StopSignals()
    stopper: Optional[GracefulStop] = None
    ckpt_dir = os.path.join(cfg.trial_dir, "ckpts")
    if mode == "train":
        # no "-v1" copies: last.ckpt is written in place (atomically) also when the run stops on a signal
        ckpt_kwargs = {"save_last": True, "save_top_k": -1, "enable_version_counter": False}
        max_steps = cfg.trainer.get("max_steps", -1)
        if max_steps and max_steps > 0:
            ckpt_kwargs["every_n_train_steps"] = max_steps
        ckpt_kwargs.update(dict(cfg.checkpoint))
        stopper = GracefulStop(signals, ckpt_dir, ddp_check_every=int(cfg.trainer.get("log_every_n_steps", 10)))
        callbacks += [
            ModelCheckpoint(dirpath=ckpt_dir, **ckpt_kwargs),
            stopper,
            RunInfo({"name": cfg.name, "tag": cfg.tag, "system_type": cfg.system_type, "data_type": cfg.data_type,
                     "trial": cfg.trial_dir}),
            LearningRates(),
            CodeSnapshotCallback(os.path.join(cfg.trial_dir, "code")),
        ]
        loggers = [TensorBoardLogger(cfg.trial_dir, name="tb_logs", version=""),
                   ResumableCSVLogger(cfg.trial_dir, name="csv_logs", version="")]
    trainer_kwargs = {"num_sanity_val_steps": 0, "inference_mode": False, "log_every_n_steps": 10, **accel}
    trainer_kwargs.update(dict(cfg.trainer))
    trainer = pl.Trainer(callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()],
                         **trainer_kwargs)

    if mode == "train":
        signals.install()  # not armed yet: a signal during start-up stops the run at once (nothing to save)
        try:
            trainer.fit(system, datamodule=dm, ckpt_path=resume_ckpt)
        except SystemExit as e:  # Lightning turns a KeyboardInterrupt outside its loops into exit(1)
            run.discard_if_empty()
            if trainer.interrupted or signals.requested:
                warn("Interrupted before a training step finished: nothing was saved.")
                return signals.exit_code if signals.requested else EXIT_INTERRUPTED
            raise e
        except BaseException:
            run.discard_if_empty()
            raise
        finally:
            signals.restore()
        if stopper is not None and stopper.saved is not None:
            resume = f"python launch.py --train --resume {shlex.quote(cfg.trial_dir)}"
            warn(f"Stopped at step {stopper.saved_step}: saved {stopper.saved}. Continue with: {resume}")
            return signals.exit_code
        if trainer.interrupted or signals.requested:
            warn("Training was interrupted before a step finished; nothing new was saved.")
            run.discard_if_empty()
            return signals.exit_code if signals.requested else EXIT_INTERRUPTED
        if _defines(system, "test_step") and hasattr(dm, "test_dataloader"):
            last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
            trainer.test(system, datamodule=dm, ckpt_path=last or None)
        if getattr(system.cfg, "export_after_train", False):
            trainer.predict(system, datamodule=dm, return_predictions=False)
        return 0
    if resume_ckpt is None:
        warn(f"--{mode} without --resume: the system's weights are freshly initialised.")
    else:
        assert ckpt_meta is not None
        system.set_resume_status(ckpt_meta["epoch"], ckpt_meta["global_step"])
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
