"""Tiny, randomly initialised checkpoints of real VLM families, built without a download.

Each builder returns ``(model, processor)`` made from the family's own transformers
classes: a real config, a real image processor and a real tokenizer (a character-level
``tokenizers`` WordLevel model plus the family's special tokens) with a chat template.
``save_pretrained`` on both yields a directory that ``AutoProcessor`` and
``AutoModelForImageTextToText`` reload, so the engine runs the exact code path it runs on
a real checkpoint. The builtin demo models' two families are built here; the tests
build the other families with the same pieces (tests/support/tiny_models.py).

We write our own builders because no maintained package ships tiny VLM checkpoints with
processors, and the machines this runs on cannot reach a model hub.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

# Every printable ASCII character is one token: a tiny vocabulary (~100) that can still
# spell any answer, including box strings such as "(123,456),(789,999)".
CHARSET = [c for c in string.printable if c not in "\t\r\x0b\x0c"]


def char_tokenizer(
    special_tokens: list[str],
    *,
    bos: str | None,
    eos: str,
    pad: str,
    unk: str = "<unk>",
    chat_template: str | None = None,
    named: dict[str, str] | None = None,
) -> Any:
    """A fast tokenizer with one token per character and the given special tokens.

    Special tokens come first so their ids stay below the small vocabulary size, as a
    real model's config requires (token ids index the embedding table).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials: list[str] = []
    for tok in [pad, eos, unk, *([bos] if bos else []), *special_tokens, *(named or {}).values()]:
        if tok not in specials:
            specials.append(tok)
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in CHARSET:
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        extra_special_tokens=[t for t in special_tokens if t not in (bos, eos, pad, unk)],
        # Named tokens (image_token, boi_token, ...) become tokenizer attributes, which
        # several processors read (InternVL, Gemma3, PaliGemma).
        model_specific_special_tokens=named or {},
        chat_template=chat_template,
        padding_side="left",
    )
    return tokenizer


def _vocab_size(tokenizer: Any) -> int:
    # Round up to a multiple of 8, as real checkpoints do; spare rows are never indexed.
    n = len(tokenizer)
    return (n + 7) // 8 * 8


def _ids(tokenizer: Any, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


# --- Qwen family -------------------------------------------------------------------------

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer() -> Any:
    return char_tokenizer(
        QWEN_SPECIALS,
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def qwen_processor(processor_cls: Any, tokenizer: Any, *, patch_size: int, max_pixels: int) -> Any:
    import transformers

    image_processor_name, video_processor_name = {
        "Qwen2VLProcessor": ("Qwen2VLImageProcessor", "Qwen2VLVideoProcessor"),
        "Qwen2_5_VLProcessor": ("Qwen2VLImageProcessor", "Qwen2VLVideoProcessor"),
        "Qwen3VLProcessor": ("Qwen2VLImageProcessor", "Qwen3VLVideoProcessor"),
    }[processor_cls.__name__]
    size = {"shortest_edge": 4 * (2 * patch_size) ** 2, "longest_edge": max_pixels}
    image_processor = getattr(transformers, image_processor_name)(
        size=size, patch_size=patch_size, merge_size=2, temporal_patch_size=2
    )
    video_processor = getattr(transformers, video_processor_name)(
        size=size, patch_size=patch_size, merge_size=2, temporal_patch_size=2
    )
    return processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def qwen_text_config(
    tokenizer: Any, *, hidden: int, layers: int, heads: int, kv_heads: int | None = None
) -> dict[str, Any]:
    head_dim = hidden // heads
    half = head_dim // 2
    # mrope sections (temporal, height, width) must sum to head_dim / 2.
    t = half // 4
    h = (half - t) // 2
    w = half - t - h
    return {
        "vocab_size": _vocab_size(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads or max(1, heads // 2),
        "head_dim": head_dim,
        "max_position_embeddings": 2048,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [t, h, w]},
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "tie_word_embeddings": False,
    }


def qwen2_vl_vision_config(
    *, hidden: int, layers: int, heads: int, out_hidden: int | None = None
) -> dict[str, Any]:
    """A tiny Qwen2-VL vision tower: 14-pixel patches merged 2x2, as in the real one.
    ``hidden`` is the tower's width, ``out_hidden`` the merger's output width (the
    language model's; the tower's by default)."""
    return {
        "depth": layers,
        "embed_dim": hidden,
        "hidden_size": out_hidden or hidden,
        "mlp_ratio": 2,
        "num_heads": heads,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }


def qwen_token_ids(tokenizer: Any) -> dict[str, Any]:
    image, video, vstart, vend = _ids(
        tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
    )
    return {
        "image_token_id": image,
        "video_token_id": video,
        "vision_start_token_id": vstart,
        "vision_end_token_id": vend,
    }


def build_qwen2_vl(
    *,
    hidden: int = 64,
    layers: int = 2,
    vision_layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    vision_hidden: int | None = None,
    vision_heads: int | None = None,
    max_pixels: int = 128 * 28 * 28,
) -> tuple[Any, Any]:
    """A tiny Qwen2-VL. ``hidden``, ``layers``, ``heads`` and ``kv_heads`` size the language
    model; the vision tower takes ``vision_hidden`` and ``vision_heads`` (the language
    model's by default), so models of one family can share a tower, as Qwen2-VL 2B, 7B
    and 72B do."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    tokenizer = qwen_tokenizer()
    vision = qwen2_vl_vision_config(
        hidden=vision_hidden or hidden, layers=vision_layers, heads=vision_heads or heads, out_hidden=hidden
    )
    config = Qwen2VLConfig(
        text_config=qwen_text_config(tokenizer, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads),
        vision_config=vision,
        **qwen_token_ids(tokenizer),
    )
    model = Qwen2VLForConditionalGeneration(config)
    processor = qwen_processor(Qwen2VLProcessor, tokenizer, patch_size=14, max_pixels=max_pixels)
    return model, processor


# --- shared pieces for the other families --------------------------------------------------


def role_template(*, bos: str, user: str, assistant: str, end: str, image: str) -> str:
    """A chat template in the common shape: ``{bos}{user}<image>text{end}{assistant}answer``.

    ``image`` is what one ``{"type": "image"}`` content item renders to; the processor
    expands it into the model's image tokens as it does for a real checkpoint.
    """
    return (
        bos
        + "{% for message in messages %}"
        + "{% if message['role'] == 'user' %}"
        + user
        + "{% else %}"
        + assistant
        + "{% endif %}"
        + "{% if message['content'] is string %}{{ message['content'] }}"
        + "{% else %}{% for content in message['content'] %}"
        + "{% if content['type'] == 'image' %}"
        + image
        + "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
        + "{% endfor %}{% endif %}"
        + end
        + "{% endfor %}"
        + "{% if add_generation_prompt %}"
        + assistant
        + "{% endif %}"
    )


def llama_text(
    tokenizer: Any, *, hidden: int, layers: int, heads: int, model_type: str = "llama"
) -> dict[str, Any]:
    return {
        "model_type": model_type,
        "vocab_size": _vocab_size(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "head_dim": hidden // heads,
        "max_position_embeddings": 2048,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }


def vit(
    model_type: str, *, hidden: int, layers: int, heads: int, image_size: int, patch: int
) -> dict[str, Any]:
    return {
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "image_size": image_size,
        "patch_size": patch,
    }


LLAVA_TEMPLATE = role_template(
    bos="<s>", user="USER: ", assistant="ASSISTANT: ", end="</s>", image="<image>\n"
)


def llava_tokenizer() -> Any:
    return char_tokenizer(
        ["<image>"],
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        chat_template=LLAVA_TEMPLATE,
        named={"image_token": "<image>"},
    )


def build_llava(
    *, hidden: int = 64, layers: int = 2, vision_layers: int = 2, heads: int = 4, image_size: int = 56
) -> tuple[Any, Any]:
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = llava_tokenizer()
    patch = 14
    config = LlavaConfig(
        vision_config=vit(
            "clip_vision_model",
            hidden=hidden,
            layers=vision_layers,
            heads=heads,
            image_size=image_size,
            patch=patch,
        ),
        text_config=llama_text(tokenizer, hidden=hidden, layers=layers, heads=heads),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // patch) ** 2,
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config)
    # Squash to a square rather than crop its centre (CLIP's default), which would cut
    # most of a wide OCR strip away.
    image_processor = CLIPImageProcessor(
        size={"height": image_size, "width": image_size}, do_center_crop=False
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    return model, processor


# Family name (the config's model_type) -> builder of a tiny random checkpoint.
BUILDERS: dict[str, Callable[..., tuple[Any, Any]]] = {"qwen2_vl": build_qwen2_vl, "llava": build_llava}
