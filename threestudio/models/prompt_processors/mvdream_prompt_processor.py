"""``mvdream-prompt-processor``: text embeddings from MVDream's own OpenCLIP ViT-H text tower.

MVDream conditions its UNet on OpenCLIP ViT-H-14's text tower read at the **penultimate** block, then ``ln_final``
(``FrozenOpenCLIPEmbedder``, layer "penultimate"): [77, 1024] per prompt. The tower is stored in the MVDream
checkpoint (``cond_stage_model.model.*``); :mod:`threestudio.models.diffusion.mvdream.loading` maps it onto
transformers' ``CLIPTextModel`` with one layer fewer (no open_clip dependency). From a diffusers-format folder the
``text_encoder/`` is loaded as is.

Tokens are open_clip's: start 49406, the BPE tokens, end 49407, truncated to 77 with the end token kept, and padded
with **0**. The BPE is CLIP's, so the tokenizer comes from ``tokenizer_name_or_path`` (default: the folder's
``tokenizer/``; for a checkpoint file, SD-2.1-base's tokenizer, ``stabilityai/stable-diffusion-2-1-base``, whose
vocabulary is the same). Padding is always 0, whatever the tokenizer's pad token.

The rest (view-dependent strings, fp16 embedding cache, encoder freed before training) is the base class's.
"""

from __future__ import annotations

import gc
import hashlib
import os
from typing import Any, Dict, List, Sequence

import torch

import threestudio
from threestudio.models.diffusion.mvdream import loading
from threestudio.models.diffusion.mvdream.loading import DEFAULT_TOKENIZER
from threestudio.models.prompt_processors.base import PromptProcessor
from threestudio.models.prompt_processors.schema import MVDREAM_NEGATIVE_PROMPT, MVDreamPromptProcessorConfig

__all__ = ["DEFAULT_TOKENIZER", "MVDREAM_NEGATIVE_PROMPT", "MVDreamPromptProcessor", "open_clip_token_ids"]
KEY = "system.prompt_processor.pretrained_model_name_or_path"
TOKENIZER_KEY = "system.prompt_processor.tokenizer_name_or_path"


def open_clip_token_ids(tokenizer: Any, prompts: Sequence[str], context_length: int = 77,
                        pad_id: int = 0) -> torch.Tensor:
    """[N, context_length] ids as open_clip makes them: start, tokens, end (truncated keeping the end), pad 0."""
    enc = tokenizer(list(prompts), add_special_tokens=True, truncation=True, max_length=context_length,
                    padding=False)
    out = torch.full((len(prompts), context_length), pad_id, dtype=torch.long)
    for i, ids in enumerate(enc["input_ids"]):
        ids = list(ids)[:context_length]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


@threestudio.register("mvdream-prompt-processor")
class MVDreamPromptProcessor(PromptProcessor):
    Config = MVDreamPromptProcessorConfig

    cfg: Config

    # ------------------------------------------------------------------ sources
    def _tokenizer_source(self) -> Any:
        c = self.cfg
        if c.tokenizer_name_or_path:
            return c.tokenizer_name_or_path, c.tokenizer_subfolder
        kind, where = loading.resolve_source(c.pretrained_model_name_or_path, c.checkpoint_file, KEY, download=False)
        if kind == "folder":
            return where, "tokenizer"
        return DEFAULT_TOKENIZER, "tokenizer"

    @classmethod
    def preflight(cls, cfg: Any) -> None:
        from threestudio.utils.config import parse_structured
        from threestudio.utils.weights import check_pretrained, is_local_path

        c = parse_structured(cls.Config, cfg)
        kind, _ = loading.resolve_source(c.pretrained_model_name_or_path, c.checkpoint_file, KEY, download=False)
        # a diffusers-format folder brings its own tokenizer/ unless another one is named
        parts = ("text_encoder",) if c.tokenizer_name_or_path or kind == "checkpoint" else ("text_encoder",
                                                                                            "tokenizer")
        loading.preflight(c.pretrained_model_name_or_path, c.checkpoint_file, KEY, parts)
        tok = c.tokenizer_name_or_path
        if tok and is_local_path(tok):
            folder = os.path.join(os.path.expanduser(tok), c.tokenizer_subfolder or "")
            if not os.path.isdir(folder):
                from threestudio.utils.weights import PretrainedWeightsError

                raise PretrainedWeightsError(
                    TOKENIZER_KEY, f"CLIP tokenizer not found: looked in the local folder {os.path.abspath(folder)}, "
                    f"which does not exist", f"point {TOKENIZER_KEY} at a Stable Diffusion 2.x folder (with "
                    f"tokenizer/), e.g. a download of {DEFAULT_TOKENIZER}")
            check_pretrained(tok, (c.tokenizer_subfolder,) if c.tokenizer_subfolder else (), TOKENIZER_KEY,
                             "CLIP tokenizer")

    def model_identity(self) -> str:
        if not hasattr(self, "_identity"):
            c = self.cfg
            parts: List[str] = [c.pretrained_model_name_or_path, str(c.checkpoint_file), "penultimate"]
            p = os.path.abspath(os.path.expanduser(c.pretrained_model_name_or_path))
            f = os.path.join(p, c.checkpoint_file) if os.path.isdir(p) and c.checkpoint_file else p
            if os.path.isfile(f):
                st = os.stat(f)
                parts.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
            elif os.path.isdir(p):
                from threestudio.utils.weights import model_fingerprint

                parts.append(model_fingerprint(p, ("text_encoder",)))
            tok, sub = self._tokenizer_source()
            parts.append(f"tok={tok}/{sub}")
            tp = os.path.join(os.path.abspath(os.path.expanduser(tok)), sub or "")
            if os.path.isdir(tp):
                for n in sorted(os.listdir(tp)):
                    st = os.stat(os.path.join(tp, n))
                    parts.append(f"{n}:{st.st_size}:{st.st_mtime_ns}")
            self._identity = "mvdream#" + hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]
        return self._identity

    def model_identity_name(self) -> str:
        c = self.cfg
        return f"MVDream's text tower ({c.pretrained_model_name_or_path}" + (
            f", {c.checkpoint_file})" if c.checkpoint_file else ")")

    # ------------------------------------------------------------------ encoding
    def encode_prompts(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        from transformers import AutoTokenizer

        from threestudio.utils.weights import load_pretrained

        c = self.cfg
        self.preflight(c)
        tok_name, tok_sub = self._tokenizer_source()
        tokenizer = load_pretrained(AutoTokenizer, tok_name, tok_sub, TOKENIZER_KEY, "CLIP tokenizer")
        models = loading.load_mvdream(c.pretrained_model_name_or_path, ("text_encoder",),
                                      checkpoint_file=c.checkpoint_file, key=KEY, dtype=torch.float32,
                                      device=self.device)
        encoder = models.text_encoder
        ctx = int(encoder.config.max_position_embeddings)
        vocab = int(encoder.config.vocab_size)
        locals_, globals_ = [], []
        bs = max(1, c.encode_batch_size)
        batches = range(0, len(prompts), bs)
        if len(prompts) > 4 * bs:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="Encoding prompts", unit="batch")
        try:
            with torch.no_grad():
                for i in batches:
                    ids = open_clip_token_ids(tokenizer, prompts[i : i + bs], ctx)
                    if int(ids.max()) >= vocab:
                        raise ValueError(
                            f"the tokenizer from {tok_name} produced id {int(ids.max())} but the text tower has "
                            f"{vocab} tokens: set {TOKENIZER_KEY} to a CLIP tokenizer of the same vocabulary")
                    out = encoder(ids.to(self.device))
                    locals_.append(out.last_hidden_state.float().cpu())
                    globals_.append(out.pooler_output.float().cpu())
        finally:
            del encoder, models, tokenizer
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return {"local": torch.cat(locals_), "global": torch.cat(globals_)}
