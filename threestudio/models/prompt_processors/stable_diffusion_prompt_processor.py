"""``stable-diffusion-prompt-processor``: CLIP text embeddings from a Stable Diffusion folder or hub id.

The tokenizer and CLIP text encoder come from the pipeline's ``tokenizer/`` and ``text_encoder/`` subfolders
(transformers, fp32; loaded by :mod:`threestudio.models.diffusion.stable_diffusion`). They are loaded only when some prompt is not yet in the embedding cache, used on the training
device, and freed (CUDA cache emptied) before training starts. Kept per prompt: ``last_hidden_state`` [77, D] (what
the UNet cross-attends to) and ``pooler_output`` [D] (the EOS feature, for amortized generators).
"""

from __future__ import annotations

import gc
from typing import Any, Callable, Dict, Optional, Sequence

import torch

import threestudio
from threestudio.models.diffusion import stable_diffusion as sd_models
from threestudio.models.prompt_processors.base import PromptProcessor
from threestudio.models.prompt_processors.schema import StableDiffusionPromptProcessorConfig
from threestudio.utils.weights import model_fingerprint

KEY = "system.prompt_processor.pretrained_model_name_or_path"


@threestudio.register("stable-diffusion-prompt-processor")
class StableDiffusionPromptProcessor(PromptProcessor):
    Config = StableDiffusionPromptProcessorConfig

    cfg: Config

    @classmethod
    def preflight(cls, cfg: Any) -> None:
        from threestudio.utils.config import parse_structured

        c = parse_structured(cls.Config, cfg)
        sd_models.check_text_encoder(c.pretrained_model_name_or_path, KEY)

    def model_identity(self) -> str:
        if not hasattr(self, "_identity"):
            name = self.cfg.pretrained_model_name_or_path
            self._identity = f"{name}#{model_fingerprint(name)}"
        return self._identity

    def encode_prompts(self, prompts: Sequence[str], on_batch: Optional[Callable[..., None]] = None
                       ) -> Dict[str, torch.Tensor]:
        """Encode in batches of ``encode_batch_size``. With ``on_batch``, each batch is handed to
        ``on_batch(start, local, global)`` (float32, CPU) instead of being collected (streaming large corpora)."""
        name = self.cfg.pretrained_model_name_or_path
        self.preflight(self.cfg)
        tokenizer, encoder = sd_models.load_text_encoder(name, KEY, self.device)
        locals_, globals_ = [], []
        bs = max(1, self.cfg.encode_batch_size)
        batches = range(0, len(prompts), bs)
        if len(prompts) > 4 * bs:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="Encoding prompts", unit="batch")
        try:
            with torch.no_grad():
                for i in batches:
                    chunk = list(prompts[i : i + bs])
                    tokens = tokenizer(chunk, padding="max_length", max_length=tokenizer.model_max_length,
                                       truncation=True, return_tensors="pt")
                    out = encoder(tokens.input_ids.to(self.device))
                    local, global_ = out.last_hidden_state.float().cpu(), out.pooler_output.float().cpu()
                    if on_batch is not None:
                        on_batch(i, local, global_)
                        continue
                    locals_.append(local)
                    globals_.append(global_)
        finally:
            del encoder, tokenizer
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if on_batch is not None:
            return {}
        return {"local": torch.cat(locals_), "global": torch.cat(globals_)}
