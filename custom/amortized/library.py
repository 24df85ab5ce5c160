"""Prompt libraries: ``{"train": [str, ...], "val": [...], "test": [...]}`` JSON files (ScaleDreamer's format).

:func:`load_prompt_library` reads and validates one; every problem raises :class:`PromptLibraryError` (a
``ConfigError``: ``launch.py`` prints it without a traceback) naming the file and the key. :func:`shard` gives a DDP
rank its share of a split (``split[rank::world_size]``: together the ranks cover every prompt exactly once).
:func:`library_hash` identifies the content (the embedding store is keyed by it).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from threestudio.utils.config import ConfigError, ConfigIssue

SPLITS = ("train", "val", "test")
KEY = "system.prompt_processor.prompt_library"
LOAD_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "load",
                        "prompt_libraries")


class PromptLibraryError(ConfigError):
    def __init__(self, message: str, suggestion: str = "", key: str = KEY) -> None:
        super().__init__([ConfigIssue(key, message, "", suggestion)], header="Invalid prompt library")


def resolve_library_path(name_or_path: str, key: str = KEY) -> str:
    """A path to a JSON file, or the stem of a library shipped in ``load/prompt_libraries/``."""
    if not name_or_path or name_or_path == "???":
        raise PromptLibraryError("no prompt library given",
                                 f"set {key}=/path/to/library.json (a JSON object with train/val/test lists)", key)
    p = os.path.abspath(os.path.expanduser(name_or_path))
    if os.path.isfile(p):
        return p
    shipped = os.path.join(LOAD_DIR, name_or_path if name_or_path.endswith(".json") else name_or_path + ".json")
    if os.path.isfile(shipped):
        return shipped
    raise PromptLibraryError(f"prompt library not found: looked for the file {p} and for {shipped}",
                             f"set {key} to an existing JSON file", key)


def validate_library(data: object, path: str, key: str = KEY) -> Dict[str, List[str]]:
    if not isinstance(data, dict):
        raise PromptLibraryError(f"{path}: the top level must be a JSON object with keys {list(SPLITS)}, "
                                 f"got {type(data).__name__}", key=key)
    out: Dict[str, List[str]] = {}
    for split in SPLITS:
        if split not in data:
            raise PromptLibraryError(f"{path}: missing split '{split}' (keys present: {sorted(data)})",
                                     f"add \"{split}\": [\"a prompt\", ...] to the file", key)
        items = data[split]
        if not isinstance(items, list):
            raise PromptLibraryError(f"{path}: key '{split}' must be a list of prompt strings, got "
                                     f"{type(items).__name__}", key=key)
        if not items:
            raise PromptLibraryError(f"{path}: key '{split}' is an empty list", "give it at least one prompt", key)
        for i, p in enumerate(items):
            if not isinstance(p, str):
                raise PromptLibraryError(f"{path}: key '{split}', item {i} must be a string, got "
                                         f"{type(p).__name__} ({p!r:.60})", key=key)
            if not p.strip():
                raise PromptLibraryError(f"{path}: key '{split}', item {i} is an empty prompt", key=key)
        out[split] = list(items)
    return out


def load_prompt_library(name_or_path: str, key: str = KEY) -> Tuple[str, Dict[str, List[str]]]:
    """(resolved path, {split: prompts}); raises :class:`PromptLibraryError` on any problem."""
    path = resolve_library_path(name_or_path, key)
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise PromptLibraryError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})",
                                 key=key) from e
    return path, validate_library(data, path, key)


def library_hash(library: Dict[str, Sequence[str]]) -> str:
    """sha256 of the canonical JSON of the three splits (independent of formatting and key order)."""
    canon = json.dumps({s: list(library[s]) for s in SPLITS}, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def shard(items: Sequence, rank: int, world_size: int) -> List:
    """Rank ``rank``'s share of ``items``: every ``world_size``-th item from ``rank`` on."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard: rank {rank} is not in [0, {world_size})")
    return list(items[rank::world_size])


def shard_indices(n: int, rank: int, world_size: int) -> List[int]:
    return shard(range(n), rank, world_size)


def dist_rank_world(rank: Optional[int] = None, world_size: Optional[int] = None) -> Tuple[int, int]:
    """(rank, world size): the given values, else torch.distributed's, else the launcher's env, else (0, 1)."""
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    env_world = os.environ.get("WORLD_SIZE")
    if env_world:
        return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))), int(env_world)
    return 0, 1


def prompt_folder_name(prompt: str, max_len: int = 180) -> str:
    """ScaleDreamer's folder name for a prompt (',' and '.' removed, spaces -> '_'), made filesystem-safe; long
    prompts are cut and get a short hash so names stay unique and under the 255-byte limit."""
    name = prompt.replace(",", "").replace(".", "").replace("/", "-").strip().replace(" ", "_")
    name = "".join(c for c in name if c.isprintable() and c not in '\\:*?"<>|') or "prompt"
    if len(name.encode("utf-8")) > max_len:
        digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
        name = name.encode("utf-8")[:max_len].decode("utf-8", "ignore") + "-" + digest
    return name
