"""CLIP losses of StyleGAN-NADA over transformers CLIP models (weights by hub id or local folder).

* Images: [-1, 1] -> [0, 1] -> bicubic resize to the model's ``image_size`` -> CLIP mean/std normalisation ->
  image embedding, L2-normalised.
* Text direction: every prompt in ``templates`` (79 ImageNet templates by default), each embedding normalised,
  ``dT = normalize(mean_t(E(tmpl_t(target)) - E(tmpl_t(source))))``; computed once and cached per model.
* :func:`directional_loss` ``= 1 - cos(dI, dT)`` with ``dI = normalize(E(I_train) - E(I_frozen))`` per image.
  An image pair with no difference yet (the first step: both generators are equal) is re-encoded with the
  trained image shifted by 1e-6, as NADA does, so the direction is defined.
* :func:`global_loss` ``= 1 - cos(E(I), E(target text))`` (raw text, no templates): used for layer selection.
* :class:`MultiCLIPLoss`: ``sum_m weight_m * loss_m`` over several CLIP models.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# ImageNet prompt templates used with CLIP (zero-shot ImageNet; StyleGAN-NADA's text directions)
IMAGENET_TEMPLATES = [
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
]


def directional_loss(img_train: torch.Tensor, img_frozen: torch.Tensor, text_dir: torch.Tensor) -> torch.Tensor:
    """Per-pair ``1 - cos(normalize(img_train - img_frozen), text_dir)`` on (normalised) embeddings [N, D]."""
    d = img_train - img_frozen
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return 1 - (d * text_dir.reshape(1, -1)).sum(-1)


def text_direction(target_feats: torch.Tensor, source_feats: torch.Tensor) -> torch.Tensor:
    """Normalised mean over templates of (target - source) normalised embeddings [T, D] -> [D]."""
    t = F.normalize(target_feats, dim=-1)
    s = F.normalize(source_feats, dim=-1)
    d = (t - s).mean(0)
    return d / d.norm().clamp_min(1e-12)


class CLIPModelLoss(torch.nn.Module):
    """One frozen transformers CLIP model with NADA's losses."""

    def __init__(self, name_or_path: str, key: str = "system.clip_models") -> None:
        super().__init__()
        from transformers import AutoTokenizer, CLIPModel

        from threestudio.utils.weights import load_pretrained

        self.name = name_or_path
        self.model = load_pretrained(CLIPModel, name_or_path, None, key, "CLIP model").eval().requires_grad_(False)
        self.tokenizer = load_pretrained(AutoTokenizer, name_or_path, None, key, "CLIP tokenizer")
        self.image_size = int(self.model.config.vision_config.image_size)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).reshape(1, 3, 1, 1), persistent=False)
        self._text_cache: Dict[tuple, torch.Tensor] = {}

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tok = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=min(77, self.model.config.text_config.max_position_embeddings),
                             return_tensors="pt").to(self.mean.device)
        out = self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok.get("attention_mask"))
        out = getattr(out, "pooler_output", out)
        return F.normalize(out.float(), dim=-1)

    def encode_images(self, img: torch.Tensor) -> torch.Tensor:
        """``img`` [N, 3, H, W] in [-1, 1] -> normalised embeddings [N, D] (differentiable)."""
        x = (img.float() + 1) / 2
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True)
        x = (x - self.mean) / self.std
        dtype = next(self.model.parameters()).dtype
        out = self.model.get_image_features(pixel_values=x.to(dtype))
        out = getattr(out, "pooler_output", out)
        return F.normalize(out.float(), dim=-1)

    def text_direction(self, source: str, target: str, templates: Sequence[str]) -> torch.Tensor:
        key = ("dir", source, target, tuple(templates))
        if key not in self._text_cache:
            tgt = self.encode_text([t.format(target) for t in templates])
            src = self.encode_text([t.format(source) for t in templates])
            self._text_cache[key] = text_direction(tgt, src)
        return self._text_cache[key]

    def text_feature(self, text: str) -> torch.Tensor:
        key = ("raw", text)
        if key not in self._text_cache:
            self._text_cache[key] = self.encode_text([text])[0]
        return self._text_cache[key]

    def directional(self, img_train: torch.Tensor, img_frozen: torch.Tensor, source: str, target: str,
                    templates: Sequence[str]) -> torch.Tensor:
        e_t = self.encode_images(img_train)
        with torch.no_grad():
            e_f = self.encode_images(img_frozen)
        same = (e_t - e_f).detach().norm(dim=-1) == 0
        if bool(same.any()):  # NADA: shift an unchanged image by 1e-6 so that the direction is defined
            e_t = torch.where(same[:, None], self.encode_images(img_train + 1e-6), e_t)
        return directional_loss(e_t, e_f, self.text_direction(source, target, templates))

    def global_(self, img: torch.Tensor, target: str) -> torch.Tensor:
        e = self.encode_images(img)
        return 1 - e @ self.text_feature(target)

    @torch.no_grad()
    def similarity(self, img: torch.Tensor, text: str) -> torch.Tensor:
        return self.encode_images(img) @ self.text_feature(text)


class MultiCLIPLoss(torch.nn.Module):
    """Weighted sum over CLIP models of the per-image directional / global losses."""

    def __init__(self, names: Sequence[str], weights: Optional[Sequence[float]] = None,
                 templates: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        weights = list(weights) if weights is not None else [1.0] * len(names)
        if len(weights) != len(names) or not names:
            raise ValueError(f"system.clip_models ({len(names)}) and system.clip_models_weight ({len(weights)}) "
                             f"must be non-empty lists of the same length")
        self.models = torch.nn.ModuleList([CLIPModelLoss(n) for n in names])
        self.weights = [float(w) for w in weights]
        self.templates: List[str] = list(templates) if templates else list(IMAGENET_TEMPLATES)

    def directional(self, img_train, img_frozen, source: str, target: str) -> torch.Tensor:
        return sum(w * m.directional(img_train, img_frozen, source, target, self.templates)
                   for m, w in zip(self.models, self.weights) if w != 0)

    def global_(self, img, target: str) -> torch.Tensor:
        return sum(w * m.global_(img, target) for m, w in zip(self.models, self.weights) if w != 0)

    def similarity(self, img, text: str) -> torch.Tensor:
        """Per-image CLIP cosine similarity, averaged over the models (unweighted)."""
        return torch.stack([m.similarity(img, text) for m in self.models]).mean(0)


def save_random_clip(folder: str, hidden: int = 32, image_size: int = 32, patch_size: int = 8, layers: int = 2,
                     projection_dim: int = 16, preset: str = "tiny", seed: int = 0) -> str:
    """Write a random-weight CLIP (transformers layout, toy byte-level tokenizer) with ``save_pretrained``.

    ``preset``: ``tiny`` (the arguments) or ``vit-b-32`` (ViT-B/32's shapes: vision 768 x 12 layers, patch 32,
    224 px; text 512 x 12 layers; projection 512)."""
    import os

    from transformers import CLIPConfig, CLIPModel

    from threestudio.utils.weights import save_toy_clip_tokenizer

    os.makedirs(folder, exist_ok=True)
    vocab = save_toy_clip_tokenizer(folder)
    torch.manual_seed(seed)
    if preset == "vit-b-32":
        text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=224, patch_size=32)
        projection_dim = 512
    elif preset == "tiny":
        text = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                    num_attention_heads=4)
        vision = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, image_size=image_size, patch_size=patch_size)
    else:
        raise ValueError(f"save_random_clip: unknown preset {preset!r} (tiny or vit-b-32)")
    text.update(vocab_size=vocab, max_position_embeddings=77, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                pad_token_id=vocab - 1)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    CLIPModel(cfg).save_pretrained(folder)
    return folder
