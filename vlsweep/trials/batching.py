"""From records to model inputs: chat-templated prompts, answers, label masks, collation.

The prompt (image + question) goes through the checkpoint's own processor and chat
template, exactly as at inference; the answer and the template's end-of-turn text are
tokenised separately and appended, so labels cover the answer tokens only (as
LLaMA-Factory encodes prompt and response apart). Each sample is encoded once per trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vlsweep.trials.codecs import BoxCodec
from vlsweep.trials.data import Record
from vlsweep.trials.families import Family

IGNORE = -100
_SENTINEL = "\x00VLSWEEP_ANSWER\x00"


@dataclass
class Encoded:
    """One encoded sample. ``prompt`` holds the generation inputs, ``full`` the training ones."""

    full: dict[str, torch.Tensor]
    prompt: dict[str, torch.Tensor]
    answer: str
    resized: tuple[int, int]


class Encoder:
    def __init__(self, processor: Any, family: Family | None, codec: BoxCodec, prompts: dict[str, str]):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.family = family
        self.codec = codec
        self.prompts = prompts
        self.has_template = bool(getattr(processor, "chat_template", None))
        self.turn_end = self._turn_end()

    def _messages(self, question: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]

    def _turn_end(self) -> str:
        """The text the chat template puts after an assistant answer (e.g. ``<|im_end|>\\n``)."""
        eos = self.tokenizer.eos_token or ""
        if not self.has_template:
            return eos
        msgs = self._messages("q")
        prompt = self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        full = self.processor.apply_chat_template(
            [*msgs, {"role": "assistant", "content": [{"type": "text", "text": _SENTINEL}]}],
            tokenize=False,
        )
        if not full.startswith(prompt) or _SENTINEL not in full:
            return eos
        return full.split(_SENTINEL, 1)[1] or eos

    def question(self, rec: Record) -> str:
        if rec.prompt is not None:
            return rec.prompt
        template = self.prompts[rec.task]
        return template.format(query=rec.query) if rec.task == "grounding" else template

    def prompt_text(self, rec: Record) -> str:
        if self.has_template:
            return self.processor.apply_chat_template(
                self._messages(self.question(rec)), add_generation_prompt=True, tokenize=False
            )
        image_token = (self.family.prompt_image_token if self.family else None) or "<image>"
        return image_token + self.question(rec)

    def _resized(self, feats: dict[str, torch.Tensor], rec: Record) -> tuple[int, int]:
        """Size of the image the vision tower saw (Qwen2.5-VL answers in those pixels)."""
        grid = feats.get("image_grid_thw")
        if grid is None:
            return rec.size
        patch = getattr(self.processor.image_processor, "patch_size", 14)
        _, h, w = (int(v) for v in grid[0])
        return (w * patch, h * patch)

    def answer(self, rec: Record, resized: tuple[int, int]) -> str:
        if rec.task == "ocr":
            assert rec.text is not None
            return rec.text
        assert rec.box is not None
        return self.codec.encode(rec.box, rec.size, resized)

    def encode(self, rec: Record) -> Encoded:
        from PIL import Image

        with Image.open(rec.image) as im:
            image = im.convert("RGB")
        prompt = dict(self.processor(text=[self.prompt_text(rec)], images=[[image]], return_tensors="pt"))
        prompt.pop("labels", None)  # PaliGemma's processor adds its own
        resized = self._resized(prompt, rec)
        answer = self.answer(rec, resized)
        answer_ids = self.tokenizer(answer + self.turn_end, add_special_tokens=False, return_tensors="pt")[
            "input_ids"
        ]
        n_prompt, n_answer = prompt["input_ids"].shape[1], answer_ids.shape[1]
        full: dict[str, torch.Tensor] = {}
        for key, value in prompt.items():
            if torch.is_tensor(value) and value.dim() == 2 and value.shape == prompt["input_ids"].shape:
                if key == "input_ids":
                    tail = answer_ids
                elif key == "attention_mask":
                    tail = torch.ones(1, n_answer, dtype=value.dtype)
                elif key == "token_type_ids" and self.family is not None:
                    tail = torch.full((1, n_answer), self.family.answer_token_type, dtype=value.dtype)
                else:
                    tail = torch.zeros(1, n_answer, dtype=value.dtype)
                full[key] = torch.cat([value, tail], dim=1)
            else:
                full[key] = value
        labels = torch.full((1, n_prompt + n_answer), IGNORE, dtype=torch.long)
        labels[0, n_prompt:] = answer_ids[0]
        full["labels"] = labels
        return Encoded(full=full, prompt=prompt, answer=answer, resized=resized)


def collate(samples: list[dict[str, torch.Tensor]], *, pad_id: int, left: bool) -> dict[str, torch.Tensor]:
    """Pad per-token tensors to one length and concatenate the image tensors.

    Per-token tensors (same shape as ``input_ids``) are padded on the left for generation
    and on the right for training. Other tensors are concatenated on their first dim, with
    trailing dims zero-padded to the largest sample, as the processors pad a batch.
    """
    length = max(s["input_ids"].shape[1] for s in samples)
    out: dict[str, torch.Tensor] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        per_token = all(
            v.dim() == 2 and v.shape == s["input_ids"].shape for v, s in zip(values, samples, strict=True)
        )
        if per_token:
            fill = pad_id if key == "input_ids" else IGNORE if key == "labels" else 0
            rows = []
            for v in values:
                pad = torch.full((1, length - v.shape[1]), fill, dtype=v.dtype)
                rows.append(torch.cat([pad, v] if left else [v, pad], dim=1))
            out[key] = torch.cat(rows, dim=0)
        else:
            shape = [max(v.shape[d] for v in values) for d in range(1, values[0].dim())]
            padded = []
            for v in values:
                if list(v.shape[1:]) != shape:
                    grown = v.new_zeros((v.shape[0], *shape))
                    grown[tuple(slice(0, n) for n in v.shape)] = v
                    v = grown
                padded.append(v)
            out[key] = torch.cat(padded, dim=0)
    return out
