"""Embedding store: a prompt library's text embeddings, encoded once into memory-mapped fp16 files.

Layout of a store folder (all arrays raw little-endian, row-major)::

    meta.json          format, text-encoder identity, library hash, shapes, contents (written last)
    pooled.f16         [N, D]           pooled (EOS) embedding per unique prompt
    tokens.f16         [N, L, D]        token embeddings (``tokens``; what the UNet / triplane cross-attend to)
    tokens_vd.f16      [N, 4, L, D]     view-dependent variants side/front/back/overhead (``view_dependent``)
    rows_<split>.i32   [len(split)]     row of each prompt of the split (prompts are deduplicated)

A store is valid only for the text encoder (``identity``) and library content (``library_hash``) recorded in its
meta; it serves any request for at most its contents (a store with view-dependent variants also serves a plain
request, e.g. ``--test`` after training). When no store serves a request, a new one is built beside the others
(``<folder>@<hash of its contents>``): a store is never deleted or replaced, since another run may have it mapped.
Building writes a temporary folder sequentially (no host copy of the corpus: one encoder batch at a time) and
renames it into place. Under DDP rank 0 builds while the others wait at a barrier; then every rank maps the files
read-only (``mmap``, random access), so host memory per rank is O(batch).
"""

from __future__ import annotations

import glob
import hashlib
import json
import mmap
import os
import shutil
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from threestudio.utils.log import get_rank, info

FORMAT = 1
DIRECTIONS = ("side", "front", "back", "overhead")
# encode(prompts, on_batch) must call on_batch(start, local [b, L, D], pooled [b, D]) for consecutive batches
EncodeFn = Callable[[Sequence[str], Callable[[int, torch.Tensor, torch.Tensor], None]], None]


def unique_rows(library: Dict[str, Sequence[str]]) -> Tuple[List[str], Dict[str, np.ndarray]]:
    """Unique prompts (first-seen order over train, val, test) and each split's row indices."""
    index: Dict[str, int] = {}
    rows = {}
    for split, prompts in library.items():
        r = np.empty(len(prompts), dtype=np.int32)
        for i, p in enumerate(prompts):
            r[i] = index.setdefault(p, len(index))
        rows[split] = r
    return list(index), rows


class _Mapped:
    """A read-only mapping of one array file. :meth:`take` copies rows out, then drops those pages from this
    process's page tables (``MADV_DONTNEED``; they stay in the shared page cache), so that the resident memory of a
    long run stays O(batch) instead of growing with every prompt it has read."""

    def __init__(self, path: str, shape: Sequence[int]) -> None:
        with open(path, "rb") as f:
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(self.mm, "madvise"):
            self.mm.madvise(mmap.MADV_RANDOM)  # rows are read at random: no read-ahead of neighbouring prompts
        arr = np.frombuffer(self.mm, dtype=np.float16)
        expected = int(np.prod(shape))
        if arr.size != expected:
            raise ValueError(f"{path}: {arr.size} values, expected {expected} for shape {tuple(shape)}")
        self.arr = arr.reshape(*shape)
        self.row_bytes = int(np.prod(shape[1:])) * 2

    def take(self, idx: np.ndarray) -> np.ndarray:
        out = np.ascontiguousarray(self.arr[idx])
        if hasattr(self.mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            page = mmap.PAGESIZE
            around = 16 * page  # the kernel's fault-around maps up to 64 KiB of neighbouring cached pages too
            for r in np.unique(idx):
                start = max(0, int(r) * self.row_bytes // page * page - around)
                end = min(len(self.mm), int(r + 1) * self.row_bytes + around)
                self.mm.madvise(mmap.MADV_DONTNEED, start, end - start)
        return out


class EmbeddingStore:
    """A read-only view of a built store. ``pooled(rows)``, ``tokens(rows)``, ``tokens_vd(rows)`` return float32
    tensors of just those rows (copied out of the mapping)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        with open(os.path.join(folder, "meta.json")) as f:
            self.meta = json.load(f)
        m = self.meta
        n, length, dim = m["n_prompts"], m["seq_len"], m["dim"]
        self._pooled = _Mapped(os.path.join(folder, "pooled.f16"), (n, dim))
        self._tokens = _Mapped(os.path.join(folder, "tokens.f16"), (n, length, dim)) if m["tokens"] else None
        self._tokens_vd = (_Mapped(os.path.join(folder, "tokens_vd.f16"), (n, len(DIRECTIONS), length, dim))
                           if m["view_dependent"] else None)
        self.rows = {s: np.fromfile(os.path.join(folder, f"rows_{s}.i32"), dtype=np.int32) for s in m["splits"]}

    @staticmethod
    def _take(arr: Optional[_Mapped], rows: Any, what: str) -> torch.Tensor:
        if arr is None:
            raise ValueError(f"this embedding store was built without {what}; rebuild it with {what} on")
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        return torch.from_numpy(arr.take(idx)).float()

    def pooled(self, rows: Any) -> torch.Tensor:
        return self._take(self._pooled, rows, "pooled embeddings")

    def tokens(self, rows: Any) -> torch.Tensor:
        return self._take(self._tokens, rows, "token embeddings (tokens: true)")

    def tokens_vd(self, rows: Any) -> torch.Tensor:
        return self._take(self._tokens_vd, rows, "view-dependent embeddings (view_dependent: true)")

    def row(self, split: str, index: Any) -> np.ndarray:
        return self.rows[split][np.asarray(index, dtype=np.int64)]

    def nbytes_on_disk(self) -> int:
        return sum(os.path.getsize(os.path.join(self.folder, n)) for n in os.listdir(self.folder))


def expected_meta(identity: str, lib_hash: str, tokens: bool, view_dependent: bool,
                  vd_template: str) -> Dict[str, Any]:
    return {"format": FORMAT, "identity": identity, "library_hash": lib_hash, "tokens": bool(tokens),
            "view_dependent": bool(view_dependent), "vd_template": vd_template if view_dependent else ""}


def read_meta(folder: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def satisfies(meta: Optional[Dict[str, Any]], want: Dict[str, Any]) -> bool:
    """A complete store serves a request when it was made by the same encoder from the same library and holds at
    least what is asked: a store with token embeddings or view-dependent variants also serves a request without."""
    if not meta or meta.get("complete") is not True:
        return False
    for k in ("format", "identity", "library_hash"):
        if meta.get(k) != want.get(k):
            return False
    if want.get("tokens") and not meta.get("tokens"):
        return False
    if want.get("view_dependent") and not (meta.get("view_dependent") and meta.get("vd_template") ==
                                           want.get("vd_template")):
        return False
    return True


def is_current(folder: str, want: Dict[str, Any]) -> bool:
    return satisfies(read_meta(folder), want)


def variant_folder(folder: str, want: Dict[str, Any]) -> str:
    """Where a store of the contents ``want`` is built: ``<folder>@<hash of want>`` (never over another store)."""
    key = json.dumps({k: want.get(k) for k in sorted(want)}, sort_keys=True)
    return f"{folder}@{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def find_store(folder: str, want: Dict[str, Any]) -> Optional[str]:
    """An existing store that serves ``want``: ``folder`` itself or one of its variants (``folder@*``); the one with
    the least extra contents first."""
    found = [f for f in [folder, *sorted(glob.glob(glob.escape(folder) + "@*"))]
             if os.path.isdir(f) and is_current(f, want)]
    if not found:
        return None

    def extra(f: str) -> int:
        m = read_meta(f) or {}
        return int(bool(m.get("view_dependent"))) * 2 + int(bool(m.get("tokens")))

    return min(found, key=extra)


def build_store(folder: str, library: Dict[str, Sequence[str]], encode: EncodeFn, want: Dict[str, Any],
                vd_prompts: Optional[Callable[[str], List[str]]] = None) -> None:
    """Encode every unique prompt (and its view-dependent variants when ``want['view_dependent']``) into a new store
    at ``folder`` (replacing a stale one)."""
    prompts, rows = unique_rows(library)
    n = len(prompts)
    tmp = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    vd = bool(want["view_dependent"])
    per = 1 + (len(DIRECTIONS) if vd else 0)
    strings: Sequence[str] = prompts
    if vd:
        assert vd_prompts is not None
        strings = [s for p in prompts for s in [p, *vd_prompts(p)]]
    files: Dict[str, Any] = {"pooled": open(os.path.join(tmp, "pooled.f16"), "wb")}
    if want["tokens"]:
        files["tokens"] = open(os.path.join(tmp, "tokens.f16"), "wb")
    if vd:
        files["tokens_vd"] = open(os.path.join(tmp, "tokens_vd.f16"), "wb")
    shape: Dict[str, int] = {}
    written = [0]

    def on_batch(start: int, local: torch.Tensor, pooled: torch.Tensor) -> None:
        if start != written[0]:
            raise RuntimeError(f"embedding store: batches out of order (got {start}, expected {written[0]})")
        shape.setdefault("seq_len", int(local.shape[1]))
        shape.setdefault("dim", int(local.shape[2]))
        local16 = local.to(torch.float16).numpy()
        pooled16 = pooled.to(torch.float16).numpy()
        for j in range(local16.shape[0]):
            variant = (start + j) % per
            if variant == 0:
                files["pooled"].write(pooled16[j].tobytes())
                if "tokens" in files:
                    files["tokens"].write(local16[j].tobytes())
            else:
                files["tokens_vd"].write(local16[j].tobytes())
        written[0] += local16.shape[0]

    info(f"Building the embedding store {folder}: {n} unique prompts"
         f"{f' x {per} (with view-dependent variants)' if vd else ''}")
    try:
        encode(strings, on_batch)
    finally:
        for f in files.values():
            f.close()
    if written[0] != len(strings):
        raise RuntimeError(f"embedding store: the encoder returned {written[0]} embeddings for {len(strings)} prompts")
    for split, r in rows.items():
        r.tofile(os.path.join(tmp, f"rows_{split}.i32"))
    meta = {**want, **shape, "n_prompts": n, "splits": list(rows), "dtype": "float16", "complete": True}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    # into place without touching any other store: another process may have it memory-mapped
    os.rename(tmp, folder)


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return get_rank()


def open_store(folder: str, library: Dict[str, Sequence[str]], encode: EncodeFn, want: Dict[str, Any],
               vd_prompts: Optional[Callable[[str], List[str]]] = None) -> EmbeddingStore:
    """A store that serves ``want``: ``folder`` or one of its variants when one exists (a store with more contents,
    e.g. the view-dependent variants of training, also serves a plain request), else a new variant built by rank 0
    while the other ranks wait. No store is ever deleted or replaced: a stale one stays until you remove it."""
    from threestudio.utils.misc import barrier

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if _rank() == 0 or not distributed:
        found = find_store(folder, want)
        if found is not None:
            info(f"Using the embedding store {found}")
        else:
            target = folder if not os.path.exists(folder) else variant_folder(folder, want)
            if os.path.exists(target):  # a folder of that name that does not serve us: never build over it
                target = f"{target}-{os.getpid()}"
            if os.path.exists(os.path.join(folder, "meta.json")):
                info(f"The embedding store {folder} does not hold what this run needs (other text encoder, library "
                     f"or contents): building {target} beside it (the old one is kept; delete it by hand if no run "
                     f"uses it)")
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            build_store(target, library, encode, want, vd_prompts)
    barrier()
    found = find_store(folder, want)
    if found is None:
        raise RuntimeError(f"rank {_rank()}: no embedding store for {folder} after rank 0 built it (is the store "
                           f"folder shared by all ranks?)")
    return EmbeddingStore(found)
