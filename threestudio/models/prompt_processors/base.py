"""Prompt-processor base: prompts -> cached text embeddings -> per-view embeddings for guidance.

A prompt processor is built once, before training (the text-to-3D systems build it in ``on_fit_start``). Building
it encodes every prompt it needs (the prompt, its four view-dependent variants, the negative prompt and its
variants) with the subclass's text encoder, which is loaded, used and freed inside :meth:`encode_prompts`: no
encoder memory is held during training. Embeddings are cached on disk as fp16, one file per (model, prompt):

    <cache_dir>/<sha1(model fingerprint | prompt)>.pt    {"prompt", "model", "local": [77, D], "global": [D]}

``cache_dir`` defaults to ``$THREESTUDIO_CACHE/text_embeddings`` or ``~/.cache/threestudio/text_embeddings`` (never
relative to the working directory). Under DDP, rank 0 encodes what is missing and the other ranks wait and read.

Calling the processor returns a :class:`PromptProcessorOutput`, whose ``get_text_embeddings`` and
``get_text_embeddings_perp_neg`` pick each sample's embedding from its camera (elevation, azimuth) with tensor
operations only (no host synchronisation, static shapes), so guidance can be compiled around it.

View-dependent prompting (threestudio's convention, azimuth in degrees, 0 = front, shifted to [-180, 180)):
``side`` everywhere, overridden by ``front`` where |azimuth| < front_threshold, by ``back`` where
|azimuth| > 180 - back_threshold, and by ``overhead`` where elevation > overhead_threshold.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from threestudio.models.prompt_processors.schema import PromptProcessorConfig
from threestudio.ops.score_distillation import shifted_exponential_decay
from threestudio.utils.base import BaseObject
from threestudio.utils.log import info
from threestudio.models.diffusion.cache import default_cache_root

# default_cache_root lives in threestudio.models.diffusion.cache; re-exported for the old import path
__all__ = ["DIRECTIONS", "PromptProcessor", "PromptProcessorOutput", "default_cache_root", "direction_index",
           "shift_azimuth_deg"]
DIRECTIONS = ("side", "front", "back", "overhead")  # index order of the view-dependent tables


def shift_azimuth_deg(azimuth: torch.Tensor) -> torch.Tensor:
    """Azimuth in degrees mapped to [-180, 180)."""
    return torch.remainder(azimuth + 180.0, 360.0) - 180.0


def direction_index(elevation: torch.Tensor, azimuth: torch.Tensor, front_threshold: float,
                    back_threshold: float, overhead_threshold: float) -> torch.Tensor:
    """Per-sample index into :data:`DIRECTIONS` (0 side, 1 front, 2 back, 3 overhead); later ones take precedence."""
    azi = shift_azimuth_deg(azimuth)
    idx = torch.zeros_like(azi, dtype=torch.long)
    idx = torch.where((azi > -front_threshold) & (azi < front_threshold), torch.ones_like(idx), idx)
    idx = torch.where((azi > 180.0 - back_threshold) | (azi < -180.0 + back_threshold), torch.full_like(idx, 2), idx)
    idx = torch.where(elevation > overhead_threshold, torch.full_like(idx, 3), idx)
    return idx


@dataclass
class PromptProcessorOutput:
    """Embeddings of one prompt, ready for guidance (tensors on the training device, float32).

    ``text_embeddings``/``uncond_text_embeddings`` [1, L, D]: the plain prompt and the negative prompt;
    ``text_embeddings_vd``/``uncond_text_embeddings_vd`` [4, L, D]: side, front, back, overhead variants.
    """

    text_embeddings: torch.Tensor
    uncond_text_embeddings: torch.Tensor
    text_embeddings_vd: torch.Tensor
    uncond_text_embeddings_vd: torch.Tensor
    prompt: str = ""
    negative_prompt: str = ""
    prompts_vd: Tuple[str, ...] = ()
    front_threshold: float = 45.0
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0
    use_perp_neg: bool = False
    perp_neg_f_sb: Tuple[float, float, float] = (1.0, 0.5, -0.606)
    perp_neg_f_fsb: Tuple[float, float, float] = (1.0, 0.5, 0.967)
    perp_neg_f_fs: Tuple[float, float, float] = (4.0, 0.5, -2.426)
    perp_neg_f_sf: Tuple[float, float, float] = (4.0, 0.5, -2.426)
    global_text_embeddings: Optional[torch.Tensor] = None  # [1, D] pooled (EOS) feature, for amortized generators

    directions: Tuple[str, ...] = DIRECTIONS

    @property
    def direction2idx(self) -> Dict[str, int]:
        return {d: i for i, d in enumerate(self.directions)}

    @property
    def embedding_dim(self) -> int:
        return int(self.text_embeddings.shape[-1])

    def to(self, device: Any = None, dtype: Optional[torch.dtype] = None) -> "PromptProcessorOutput":
        def mv(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if x is None else x.to(device=device, dtype=dtype or x.dtype)

        kw = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("text_embeddings", "uncond_text_embeddings", "text_embeddings_vd", "uncond_text_embeddings_vd",
                  "global_text_embeddings"):
            kw[k] = mv(kw[k])
        return PromptProcessorOutput(**kw)

    def direction_index(self, elevation: torch.Tensor, azimuth: torch.Tensor) -> torch.Tensor:
        return direction_index(elevation, azimuth, self.front_threshold, self.back_threshold, self.overhead_threshold)

    def get_text_embeddings(self, elevation: torch.Tensor, azimuth: torch.Tensor,
                            camera_distances: Optional[torch.Tensor] = None,
                            view_dependent_prompting: bool = True) -> torch.Tensor:
        """[2B, L, D]: B conditional embeddings (each sample's view-dependent variant when
        ``view_dependent_prompting``), then B unconditional ones."""
        b = elevation.shape[0]
        if view_dependent_prompting:
            idx = self.direction_index(elevation, azimuth).to(self.text_embeddings_vd.device)
            cond = self.text_embeddings_vd[idx]
            uncond = self.uncond_text_embeddings_vd[idx]
        else:
            cond = self.text_embeddings.expand(b, -1, -1)
            uncond = self.uncond_text_embeddings.expand(b, -1, -1)
        return torch.cat([cond, uncond], dim=0)

    def get_text_embeddings_perp_neg(self, elevation: torch.Tensor, azimuth: torch.Tensor,
                                     camera_distances: Optional[torch.Tensor] = None,
                                     view_dependent_prompting: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """Perp-Neg embeddings (threestudio's layout): ([4B, L, D], weights [B, 2]).

        Rows: B positive embeddings (front/side or side/back interpolated by azimuth; overhead as is), B
        unconditional ones, then 2B negative ones in sample-major order (sample b's two negatives are rows
        2B + 2b and 2B + 2b + 1). The weights are ``-f(r)`` with threestudio's shifted-exponential curves
        (zero for overhead views, whose negatives are the unconditional embedding).
        """
        if not view_dependent_prompting:
            raise ValueError("Perp-Neg needs view-dependent prompting (guidance.view_dependent_prompting: true)")
        dev = self.text_embeddings_vd.device
        elevation, azimuth = elevation.to(dev), azimuth.to(dev)
        side, front, back, overhead = (self.text_embeddings_vd[i] for i in range(4))
        idx = self.direction_index(elevation, azimuth)
        uncond = self.uncond_text_embeddings_vd[idx]  # [B, L, D]
        azi = shift_azimuth_deg(azimuth).abs().float()
        is_fs = (azi < 90.0)[:, None, None]
        is_over = (idx == 3)[:, None, None]
        r_fs = 1.0 - azi / 90.0  # 1: full front, 0: full side
        r_sb = 2.0 - azi / 90.0  # 1: full side, 0: full back
        r = torch.where(is_fs[:, 0, 0], r_fs, r_sb)[:, None, None]
        pos = torch.where(is_fs, r * front + (1 - r) * side, r * side + (1 - r) * back)
        pos = torch.where(is_over, overhead.expand_as(pos), pos)
        neg1 = torch.where(is_fs, front.expand_as(pos), side.expand_as(pos))
        neg2 = torch.where(is_fs, side.expand_as(pos), front.expand_as(pos))
        neg1 = torch.where(is_over, uncond, neg1)
        neg2 = torch.where(is_over, uncond, neg2)
        w1 = torch.where(azi < 90.0, -shifted_exponential_decay(*self.perp_neg_f_fs, r_fs),
                         -shifted_exponential_decay(*self.perp_neg_f_sb, r_sb))
        w2 = torch.where(azi < 90.0, -shifted_exponential_decay(*self.perp_neg_f_sf, 1 - r_fs),
                         -shifted_exponential_decay(*self.perp_neg_f_fsb, r_sb))
        weights = torch.stack([w1, w2], dim=-1)
        weights = torch.where((idx == 3)[:, None], torch.zeros_like(weights), weights)
        negs = torch.stack([neg1, neg2], dim=1).flatten(0, 1)  # sample-major
        return torch.cat([pos, uncond, negs], dim=0), weights

    def get_global_text_embeddings(self) -> Optional[torch.Tensor]:
        return self.global_text_embeddings


class PromptProcessor(BaseObject):
    """Base class: config, view-dependent prompt strings, the on-disk embedding cache and the output object.

    Subclasses implement :meth:`encode_prompts` (load the encoder, encode, free it) and may override
    :meth:`model_identity` and :meth:`preflight`.
    """

    __threestudio_family__ = "prompt-processor"

    Config = PromptProcessorConfig

    cfg: Config

    # ------------------------------------------------------------------ subclass API
    def encode_prompts(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Encode ``prompts`` -> {"local": [N, L, D], "global": [N, D]} (any dtype/device). Load the encoder here
        and free it before returning."""
        raise NotImplementedError

    def model_identity(self) -> str:
        """A string that changes when the text encoder changes (part of every cache key)."""
        return self.cfg.pretrained_model_name_or_path

    @classmethod
    def preflight(cls, cfg: Any) -> None:
        """Cheap start-up checks (no weights loaded); raise a clear error if the run cannot work."""

    # ------------------------------------------------------------------ prompts
    def view_dependent_prompts(self, prompt: str) -> List[str]:
        c = self.cfg
        overrides = [c.prompt_side, c.prompt_front, c.prompt_back, c.prompt_overhead]
        out = []
        for d, o in zip(DIRECTIONS, overrides):
            if o is not None:
                out.append(o)
            elif c.view_dependent_prompt_front:
                out.append(f"{d} view of {prompt}")
            else:
                out.append(f"{prompt}, {d} view")
        return out

    # ------------------------------------------------------------------ build
    def configure(self) -> None:
        from threestudio.utils.misc import get_device

        self.device = get_device()
        self.prompt = self.cfg.prompt
        self.negative_prompt = self.cfg.negative_prompt
        self.prompts_vd = self.view_dependent_prompts(self.prompt)
        # negative prompts are not view-dependent (threestudio's convention): the same string for every direction
        self.negative_prompts_vd = [self.negative_prompt] * len(DIRECTIONS)
        needed = [self.prompt, self.negative_prompt, *self.prompts_vd]
        embs = self.load_embeddings(needed)
        self._local = {p: embs[p]["local"] for p in needed}
        self._global = {p: embs[p]["global"] for p in needed}
        info(f"Prompt: '{self.prompt}' (negative: '{self.negative_prompt}'); view-dependent: "
             + "; ".join(f"{d}: '{p}'" for d, p in zip(DIRECTIONS, self.prompts_vd)))

    @property
    def cache_dir(self) -> str:
        if self.cfg.cache_dir:
            return os.path.abspath(os.path.expanduser(self.cfg.cache_dir))
        return os.path.join(default_cache_root(), "text_embeddings")

    def cache_path(self, prompt: str) -> str:
        key = hashlib.sha1(f"{self.model_identity()}|{prompt}".encode("utf-8")).hexdigest()
        return os.path.join(self.cache_dir, f"{key}.pt")

    def _read_cache(self, prompt: str) -> Optional[Dict[str, torch.Tensor]]:
        path = self.cache_path(prompt)
        if not os.path.isfile(path):
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged file: encode again
            return None
        if data.get("prompt") != prompt or data.get("model") != self.model_identity():
            return None
        return {"local": data["local"], "global": data["global"]}

    def _write_cache(self, prompt: str, local: torch.Tensor, global_: torch.Tensor) -> None:
        from threestudio.utils.saving import atomic_output

        payload = {"prompt": prompt, "model": self.model_identity(), "local": local.half().cpu().contiguous(),
                   "global": global_.half().cpu().contiguous()}
        with atomic_output(self.cache_path(prompt)) as tmp:
            torch.save(payload, tmp)

    def load_embeddings(self, prompts: Sequence[str]) -> Dict[str, Dict[str, torch.Tensor]]:
        """Embeddings of ``prompts`` from the cache; the missing ones are encoded (rank 0) and cached."""
        from threestudio.utils.log import get_rank
        from threestudio.utils.misc import barrier

        unique = list(dict.fromkeys(prompts))
        out: Dict[str, Dict[str, torch.Tensor]] = {}
        if self.cfg.use_cache:
            for p in unique:
                hit = self._read_cache(p)
                if hit is not None:
                    out[p] = hit
        missing = [p for p in unique if p not in out]
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if missing and (get_rank() == 0 or not self.cfg.use_cache or not distributed):
            info(f"Encoding {len(missing)} prompt(s) with {self.model_identity_name()} "
                 f"({len(unique) - len(missing)} cached in {self.cache_dir})")
            enc = self.encode_prompts(missing)
            for i, p in enumerate(missing):
                local, global_ = enc["local"][i].detach(), enc["global"][i].detach()
                if self.cfg.use_cache:
                    self._write_cache(p, local, global_)
                # the same fp16 rounding as a cache hit, so a run does not depend on whether the cache was warm
                out[p] = {"local": local.half().cpu(), "global": global_.half().cpu()}
        if distributed and self.cfg.use_cache:
            barrier()  # every rank, whether or not it had misses: rank 0 has written the cache after this
            for p in missing:
                if p not in out:
                    hit = self._read_cache(p)
                    if hit is None:
                        raise RuntimeError(f"rank {get_rank()}: text embedding of '{p}' not found in {self.cache_dir} "
                                           f"after rank 0 encoded it (is the cache folder shared by all ranks?)")
                    out[p] = hit
        return out

    def model_identity_name(self) -> str:
        return self.cfg.pretrained_model_name_or_path

    # ------------------------------------------------------------------ output
    def __call__(self) -> PromptProcessorOutput:
        dev = self.device

        def stack(ps: Sequence[str]) -> torch.Tensor:
            return torch.stack([self._local[p] for p in ps]).float().to(dev)

        c = self.cfg
        return PromptProcessorOutput(
            text_embeddings=stack([self.prompt]),
            uncond_text_embeddings=stack([self.negative_prompt]),
            text_embeddings_vd=stack(self.prompts_vd),
            uncond_text_embeddings_vd=stack(self.negative_prompts_vd),
            prompt=self.prompt, negative_prompt=self.negative_prompt, prompts_vd=tuple(self.prompts_vd),
            front_threshold=c.front_threshold, back_threshold=c.back_threshold,
            overhead_threshold=c.overhead_threshold, use_perp_neg=c.use_perp_neg,
            perp_neg_f_sb=tuple(c.perp_neg_f_sb), perp_neg_f_fsb=tuple(c.perp_neg_f_fsb),
            perp_neg_f_fs=tuple(c.perp_neg_f_fs), perp_neg_f_sf=tuple(c.perp_neg_f_sf),
            global_text_embeddings=self._global[self.prompt][None].float().to(dev),
        )
