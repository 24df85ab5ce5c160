"""Rank-aware logging: ``threestudio.info`` etc. print on global rank 0 only (DEBUG with --verbose)."""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("threestudio")


def get_rank() -> int:
    """Global rank from the launcher's environment (0 when not distributed)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(key)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                pass
    return 0


def setup_logging(verbose: bool = False) -> None:
    """Install a rich handler on the 'threestudio' logger (idempotent)."""
    level = logging.DEBUG if verbose else logging.INFO
    logger.setLevel(level)
    if not any(getattr(h, "_threestudio", False) for h in logger.handlers):
        handler: logging.Handler
        if sys.stderr.isatty():
            from rich.logging import RichHandler

            handler = RichHandler(show_path=verbose, rich_tracebacks=False, markup=False)
            handler.setFormatter(logging.Formatter("%(message)s"))
        else:  # logs piped to a file or CI: plain lines, never wrapped
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        handler._threestudio = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    for h in logger.handlers:
        h.setLevel(level)


def _prefix(msg: str) -> str:
    rank = get_rank()
    return msg if rank == 0 else f"[rank {rank}] {msg}"


def debug(msg: str, *args, all_ranks: bool = False) -> None:
    if all_ranks or get_rank() == 0:
        logger.debug(_prefix(msg), *args)


def info(msg: str, *args, all_ranks: bool = False) -> None:
    if all_ranks or get_rank() == 0:
        logger.info(_prefix(msg), *args)


def warn(msg: str, *args, all_ranks: bool = False) -> None:
    if all_ranks or get_rank() == 0:
        logger.warning(_prefix(msg), *args)


def error(msg: str, *args) -> None:
    logger.error(_prefix(msg), *args)
