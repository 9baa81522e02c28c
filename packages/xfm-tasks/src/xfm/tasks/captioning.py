"""Image captioning (``xfm finetune captioning`` / ``xfm eval captioning``), COCO Karpathy format.

Model: the vision encoder and the answer decoder (:class:`~xfm.tasks.decoder.AnswerDecoder`)
cross-attending to the vision states, trained with the LM loss (token-level cross-entropy,
optional label smoothing). Decoding: greedy (``beam_size: 1``) or beam search. Metrics: BLEU-4
and CIDEr-D from ``pycocoevalcap`` (:mod:`xfm.tasks.captioning_metrics`), plus the same metrics
of an image-blind baseline (every image gets a reference caption of another image).

Data (X-VLM Karpathy JSON): training ``[{"image", "caption": str | [str]}]`` (one sample per
caption), evaluation ``[{"image", "caption": [references]}]``; the shapes-world retrieval files
(``tasks/retrieval_{train,test}.json``) have that layout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from xfm.core.checkpoint import LoadReport, load_into
from xfm.core.registry import create
from xfm.tasks.base import Task, TaskData, TaskDataSection, collect_outputs
from xfm.tasks.base_data import ImageReader, image_source, read_task_items, require, tokenize
from xfm.tasks.captioning_metrics import caption_scores
from xfm.tasks.decoder import (
    AnswerDecoder,
    DecoderConfig,
    beam_search,
    decoder_state_from_pretrained,
    greedy_decode,
)
from xfm.train.engine import unwrap

__all__ = ["CaptionModel", "CaptionSet", "CaptioningTask"]


class CaptionModel(nn.Module):
    """``vision_encoder`` + ``text_decoder`` (cross-attends to the vision states ``[B,1+N,Dv]``)."""

    def __init__(self, spec: Mapping[str, Any], decoder_layers: int = 2) -> None:
        super().__init__()
        vision = dict(spec.get("vision", {"name": "beit_v2"}))
        name = vision.pop("name")
        self.vision_encoder = create("vision_encoder", name, **vision)
        text = dict(spec.get("text", {}))
        fields = {
            "vocab_size": text.get("vocab_size", 50265),
            "width": text.get("width", 768),
            "heads": text.get("heads", 12),
            "ffn_dim": text.get("ffn_dim", 3072),
            "max_positions": text.get("max_positions", 514),
            "pad_token_id": text.get("pad_token_id", 1),
            "layer_norm_eps": text.get("layer_norm_eps", 1e-5),
            "dropout": text.get("dropout", 0.1),
            "attn_dropout": text.get("attn_dropout", 0.1),
            "layers": int(decoder_layers),
            "context_width": self.vision_encoder.width,
            **dict(spec.get("decoder", {})),
        }
        self.text_decoder = AnswerDecoder(DecoderConfig(**fields))

    def lm_loss(
        self,
        image: torch.Tensor,
        caption_ids: torch.Tensor,
        caption_mask: torch.Tensor,
        label_smoothing: float = 0.0,
    ) -> torch.Tensor:
        """Mean token cross-entropy of ``caption_ids`` ``[B, T]`` given ``image`` ``[B,3,H,W]``."""
        vision = self.vision_encoder(image)
        logits = self.text_decoder(caption_ids, caption_mask, vision)
        pad = self.text_decoder.config.pad_token_id
        targets = caption_ids[:, 1:].masked_fill(caption_ids[:, 1:] == pad, -100)
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=-100,
            label_smoothing=label_smoothing,
        )

    def init_from_pretrained(self, state: Mapping[str, torch.Tensor]) -> LoadReport:
        """Initialise from an xfm :class:`~xfm.fusion.model.XFM` state dict (pretraining): the
        vision encoder by name, the decoder from the fusion encoder
        (:func:`~xfm.tasks.decoder.decoder_state_from_pretrained`; its cross-attention reads
        the vision states, as the fusion encoder's does)."""
        mapped = {k: v for k, v in state.items() if k.startswith("vision_encoder.")}
        mapped.update(decoder_state_from_pretrained(state))
        return load_into(self, mapped, strict=False, source="xfm pretraining state")

    @torch.no_grad()
    def generate(
        self, image: torch.Tensor, beam_size: int = 1, max_length: int = 20
    ) -> torch.Tensor:
        """Token ids ``[B, <= max_length]`` (``<s>`` first)."""
        vision = self.vision_encoder(image)
        if beam_size <= 1:
            return greedy_decode(self.text_decoder, vision, max_length=max_length)
        return beam_search(self.text_decoder, vision, num_beams=beam_size, max_length=max_length)


class CaptionSet(torch.utils.data.Dataset):
    """Training: one ``(image, caption)`` per caption; evaluation: ``(image, references)``.

    ``items`` is a list of entries or a lazily read task MDS table (its images are then read
    row by row; a training table is scanned once for its caption counts).
    """

    def __init__(self, items: Sequence[dict[str, Any]], reader: ImageReader, train: bool) -> None:
        self.reader = reader
        self.source = items
        self.train = train
        self.lazy = not isinstance(items, list)
        #: (entry index, caption index or -1 for all references)
        self.index: list[tuple[int, int]] = []
        for n, item in enumerate(items):
            caps = self._captions(item, n)
            if train:
                self.index += [(n, k) for k in range(len(caps))]
            else:
                self.index.append((n, -1))

    @staticmethod
    def _captions(item: dict[str, Any], n: int) -> list[str]:
        require(item, ("image", "caption"), f"caption annotation #{n}")
        caps = item["caption"] if isinstance(item["caption"], list) else [item["caption"]]
        if not caps or not all(isinstance(c, str) for c in caps):
            raise ValueError(f"caption annotation #{n}: 'caption' must be text or a list")
        return caps

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any, int]:
        n, k = self.index[i]
        item = self.source[n]
        caps = self._captions(item, n)
        caption = caps[k] if k >= 0 else caps
        return self.reader(image_source(item), seed=i)[0], caption, i


class CaptioningTask(Task):
    """COCO captioning. Options: ``decoder_layers``, ``beam_size``, ``max_length``,
    ``label_smoothing``, ``decoder_init`` (``fusion``: a pretraining ``init_from`` checkpoint
    initialises the decoder from its fusion encoder, official; ``none``: left fresh)."""

    name: ClassVar[str] = "captioning"
    metric: ClassVar[str] = "cider"
    official_layout: ClassVar[str | None] = None
    model_sections: ClassVar[dict[str, type]] = {"decoder": DecoderConfig}
    default_options: ClassVar[dict[str, Any]] = {
        "decoder_layers": 2,
        "beam_size": 1,
        "max_length": 20,
        "label_smoothing": 0.0,
        "decoder_init": "fusion",
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.tokenizer: Any = None

    def build_model(self, model_config: Mapping[str, Any]) -> CaptionModel:
        return CaptionModel(model_config, self.options["decoder_layers"])

    def _data(self, data: TaskDataSection, path: str, what: str, train: bool, tokenizer: Any):
        self.tokenizer = tokenizer
        items = read_task_items(data.expand(path), "caption", what)
        reader = ImageReader(data.expand(data.root), data.image_size, train and data.augment)
        max_tokens = data.max_tokens

        def collate(batch: list[Any]) -> dict[str, Any]:
            out: dict[str, Any] = {"image": torch.stack([im for im, _, _ in batch])}
            if train:
                ids, mask = tokenize(tokenizer, [c for _, c, _ in batch], max_tokens)
                out.update(caption_ids=ids, caption_mask=mask)
            else:
                out.update(references=[c for _, c, _ in batch], index=[i for *_, i in batch])
            return out

        return TaskData(CaptionSet(items, reader, train), collate)

    def train_data(self, data: TaskDataSection, tokenizer: Any) -> TaskData:
        return self._data(data, data.train, "captioning train", True, tokenizer)

    def eval_data(self, data: TaskDataSection, split: str, tokenizer: Any) -> TaskData:
        return self._data(data, data.eval[split], f"captioning {split}", False, tokenizer)

    def loss(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        net = unwrap(model)
        loss = net.lm_loss(
            batch["image"],
            batch["caption_ids"],
            batch["caption_mask"],
            self.options["label_smoothing"],
        )
        return {"loss": loss, "lm": loss}

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        data: TaskData,
        *,
        batch_size: int = 64,
        device: torch.device | None = None,
        autocast: Callable[[], Any] | None = None,
        progress: bool = False,
    ) -> dict[str, float]:
        if self.tokenizer is None:
            raise RuntimeError("captioning evaluation needs the tokenizer: call eval_data first")
        tokenizer = self.tokenizer

        def step(batch: dict[str, Any]) -> dict[str, Any]:
            ids = model.generate(
                batch["image"], self.options["beam_size"], self.options["max_length"]
            )
            captions = [
                tokenizer.decode(seq, skip_special_tokens=True).strip() for seq in ids.tolist()
            ]
            return {"index": batch["index"], "caption": captions, "references": batch["references"]}

        out = collect_outputs(
            data,
            step,
            batch_size=batch_size,
            device=device or next(model.parameters()).device,
            autocast=autocast,
            progress=progress,
            desc="captioning eval",
        )
        preds: dict[int, str] = dict(zip(out["index"], out["caption"]))
        refs: dict[int, list[str]] = dict(zip(out["index"], out["references"]))
        scores = caption_scores(preds, refs)
        keys = list(refs)
        blind = {k: refs[keys[(j + 1) % len(keys)]][0] for j, k in enumerate(keys)}
        base = caption_scores(blind, refs)
        return {
            "cider": scores["cider"],
            "bleu4": scores["bleu4"],
            "blind_cider": base["cider"],
            "blind_bleu4": base["bleu4"],
            "images": float(len(refs)),
        }
