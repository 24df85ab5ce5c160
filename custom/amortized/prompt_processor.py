"""``amortized-prompt-library-processor``: text embeddings of a whole prompt library, from an embedding store.

The text encoder is the one of an existing prompt processor (``encoder_type``, default
``stable-diffusion-prompt-processor``): it is built with this processor's settings (model, negative prompt,
view-dependent strings, Perp-Neg curves), which encodes the negative prompt (through its per-prompt cache), and its
``encode_prompts`` then streams the library into the store (:mod:`.store`). View-dependent variants are stored only
when the guidance asks for them (``view_dependent: null`` = ask the system, i.e. the guidance's
``view_dependent_prompting``).

Per step the system asks :meth:`batch` for the k prompts of a batch (rows of a split, or prompt strings outside the
library, or a lerp of two prompts) and gets :class:`MultiPromptOutput`, which the existing guidances accept as
``prompt_utils`` (``get_text_embeddings``/``get_text_embeddings_perp_neg`` pick each view's embedding), plus the
pooled [k, D] and token [k, L, D] embeddings that condition the generators.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch

import threestudio
from threestudio.models.diffusion.cache import default_cache_root
from threestudio.models.prompt_processors.base import PromptProcessor, PromptProcessorOutput
from threestudio.utils.base import BaseObject

from .library import library_hash, load_prompt_library
from .schema import PromptLibraryProcessorConfig
from .store import EmbeddingStore, expected_meta, open_store


@dataclass
class MultiPromptOutput(PromptProcessorOutput):
    """Embeddings for B = k prompts x n_view views (prompt-major rows). ``text_embeddings`` [B, L, D] and
    ``text_embeddings_vd`` [4, B, L, D] are per row; the negative prompt's are shared ([1, L, D], [4, L, D])."""

    has_view_dependent: bool = False

    def get_text_embeddings(self, elevation: torch.Tensor, azimuth: torch.Tensor,
                            camera_distances: Optional[torch.Tensor] = None,
                            view_dependent_prompting: bool = True) -> torch.Tensor:
        b = elevation.shape[0]
        if b != self.text_embeddings.shape[0]:
            raise ValueError(f"{b} cameras for {self.text_embeddings.shape[0]} prompt rows (k prompts x n_view)")
        if view_dependent_prompting:
            self._need_vd()
            idx = self.direction_index(elevation, azimuth).to(self.text_embeddings_vd.device)
            cond = self.text_embeddings_vd[idx, torch.arange(b, device=idx.device)]
            uncond = self.uncond_text_embeddings_vd[idx]
        else:
            cond = self.text_embeddings
            uncond = self.uncond_text_embeddings.expand(b, -1, -1)
        return torch.cat([cond, uncond], dim=0)

    def get_text_embeddings_perp_neg(self, elevation: torch.Tensor, azimuth: torch.Tensor,
                                     camera_distances: Optional[torch.Tensor] = None,
                                     view_dependent_prompting: bool = True):
        self._need_vd()  # the base formula works per row: text_embeddings_vd[i] is [B, L, D]
        return super().get_text_embeddings_perp_neg(elevation, azimuth, camera_distances, view_dependent_prompting)

    def _need_vd(self) -> None:
        if not self.has_view_dependent:
            raise ValueError("the guidance asks for view-dependent embeddings but the embedding store has none: set "
                             "system.prompt_processor.view_dependent=true (or null to follow the guidance)")


@threestudio.register("amortized-prompt-library-processor")
class PromptLibraryProcessor(BaseObject):
    __threestudio_family__ = "prompt-processor"

    Config = PromptLibraryProcessorConfig

    cfg: Config

    def configure(self, view_dependent: bool = False) -> None:
        from threestudio.utils.misc import get_device

        c = self.cfg
        self.device = get_device()
        self.view_dependent = bool(view_dependent if c.view_dependent is None else c.view_dependent)
        self.path, self.library = load_prompt_library(c.prompt_library)
        enc_cls = threestudio.find(c.encoder_type, "prompt-processor", "system.prompt_processor.encoder_type")
        fields = set(enc_cls.Config.__dataclass_fields__)
        enc_cfg = {k: getattr(c, k) for k in PromptProcessor.Config.__dataclass_fields__ if k in fields}
        enc_cfg.update(dict(c.encoder_config))
        enc_cfg["prompt"] = c.negative_prompt or " "
        self.encoder = enc_cls(enc_cfg)  # encodes (or reads from its cache) the negative prompt
        neg = self.encoder.load_embeddings([c.negative_prompt])[c.negative_prompt]
        self.uncond_local = neg["local"].float()
        want = expected_meta(self.encoder.model_identity(), library_hash(self.library), c.tokens,
                             self.view_dependent, "|".join(self.encoder.view_dependent_prompts("{}")))
        self.store: EmbeddingStore = open_store(self.store_folder(), self.library, self._encode, want,
                                                self.encoder.view_dependent_prompts)

    def store_folder(self) -> str:
        root = self.cfg.store_dir or os.path.join(default_cache_root(), "prompt_stores")
        stem = os.path.splitext(os.path.basename(self.path))[0]
        where = hashlib.sha1(self.path.encode()).hexdigest()[:8]
        return os.path.join(os.path.abspath(os.path.expanduser(root)), f"{stem}-{where}")

    def _encode(self, prompts: Sequence[str], on_batch: Any) -> None:
        enc = self.encoder
        if "on_batch" in inspect.signature(enc.encode_prompts).parameters:
            enc.encode_prompts(prompts, on_batch=on_batch)
            return
        from tqdm.auto import tqdm

        chunk = 4096  # an encoder without streaming: bounded chunks (it reloads its weights per chunk)
        for s in tqdm(range(0, len(prompts), chunk), desc="Encoding prompt library", unit="chunk"):
            out = enc.encode_prompts(list(prompts[s : s + chunk]))
            on_batch(s, out["local"].float(), out["global"].float())

    # ------------------------------------------------------------------ per-step embeddings
    def rows_embeddings(self, split: str, index: Any) -> Dict[str, torch.Tensor]:
        rows = self.store.row(split, torch.as_tensor(index).reshape(-1).cpu().numpy())
        out = {"pooled": self.store.pooled(rows)}
        if self.store.meta["tokens"]:
            out["tokens"] = self.store.tokens(rows)
        if self.view_dependent:
            out["tokens_vd"] = self.store.tokens_vd(rows)
        return out

    def prompt_embeddings(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Prompts outside the store (e.g. interpolation end points), through the encoder's per-prompt cache."""
        enc = self.encoder
        need = list(prompts) + ([s for p in prompts for s in enc.view_dependent_prompts(p)] if self.view_dependent
                                else [])
        e = enc.load_embeddings(need)
        out = {"pooled": torch.stack([e[p]["global"] for p in prompts]).float(),
               "tokens": torch.stack([e[p]["local"] for p in prompts]).float()}
        if self.view_dependent:
            out["tokens_vd"] = torch.stack([torch.stack([e[s]["local"] for s in enc.view_dependent_prompts(p)])
                                            for p in prompts]).float()
        return out

    @staticmethod
    def lerp(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], alpha: float) -> Dict[str, torch.Tensor]:
        return {k: torch.lerp(a[k], b[k], float(alpha)) for k in a}

    def output(self, emb: Dict[str, torch.Tensor], n_view: int, device: Any = None) -> MultiPromptOutput:
        """The guidance's ``prompt_utils`` for k prompts x ``n_view`` views (and the generator inputs)."""
        c, dev = self.cfg, device or self.device
        rep = lambda x: x.repeat_interleave(n_view, dim=0).to(dev)  # noqa: E731
        tokens = emb.get("tokens")
        vd = emb.get("tokens_vd")
        per_row = rep(tokens) if tokens is not None else rep(vd[:, 0])
        neg = self.uncond_local.to(dev)
        return MultiPromptOutput(
            text_embeddings=per_row, uncond_text_embeddings=neg[None],
            text_embeddings_vd=(rep(vd).transpose(0, 1) if vd is not None else per_row[None].expand(4, -1, -1, -1)),
            uncond_text_embeddings_vd=neg[None].expand(4, -1, -1), negative_prompt=c.negative_prompt,
            front_threshold=c.front_threshold, back_threshold=c.back_threshold,
            overhead_threshold=c.overhead_threshold, use_perp_neg=c.use_perp_neg,
            perp_neg_f_sb=tuple(c.perp_neg_f_sb), perp_neg_f_fsb=tuple(c.perp_neg_f_fsb),
            perp_neg_f_fs=tuple(c.perp_neg_f_fs), perp_neg_f_sf=tuple(c.perp_neg_f_sf),
            global_text_embeddings=emb["pooled"].to(dev), has_view_dependent=vd is not None)

    def __call__(self) -> "PromptLibraryProcessor":
        return self
