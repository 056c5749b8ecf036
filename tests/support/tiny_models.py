"""Tiny random checkpoints of the VLM families the tests cover beyond the builtin
models' two (``vlsweep.demo.tiny`` builds qwen2_vl and llava). Test-only: ``BUILDERS``
maps every family of ``vlsweep.trials.FAMILIES`` to a builder of ``(model, processor)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from vlsweep.demo.tiny import (
    LLAVA_TEMPLATE,
    build_llava,
    build_qwen2_vl,
    char_tokenizer,
    llama_text,
    llava_tokenizer,
    qwen2_vl_vision_config,
    qwen_processor,
    qwen_text_config,
    qwen_token_ids,
    qwen_tokenizer,
    role_template,
    vit,
)


def build_qwen2_5_vl(
    *,
    hidden: int = 64,
    layers: int = 2,
    vision_layers: int = 2,
    heads: int = 4,
    max_pixels: int = 128 * 28 * 28,
) -> tuple[Any, Any]:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
    )

    tokenizer = qwen_tokenizer()
    config = Qwen2_5_VLConfig(
        text_config=qwen_text_config(tokenizer, hidden=hidden, layers=layers, heads=heads),
        vision_config={
            "depth": vision_layers,
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_heads": heads,
            "out_hidden_size": hidden,
            "patch_size": 14,
            "window_size": 56,
            "fullatt_block_indexes": [vision_layers - 1],
        },
        **qwen_token_ids(tokenizer),
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    processor = qwen_processor(Qwen2_5_VLProcessor, tokenizer, patch_size=14, max_pixels=max_pixels)
    return model, processor


def build_qwen3_vl(
    *,
    hidden: int = 64,
    layers: int = 2,
    vision_layers: int = 2,
    heads: int = 4,
    max_pixels: int = 128 * 32 * 32,
) -> tuple[Any, Any]:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    tokenizer = qwen_tokenizer()
    text = qwen_text_config(tokenizer, hidden=hidden, layers=layers, heads=heads)
    text["rope_parameters"]["mrope_interleaved"] = True
    config = Qwen3VLConfig(
        text_config=text,
        vision_config={
            "depth": vision_layers,
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_heads": heads,
            "out_hidden_size": hidden,
            "patch_size": 16,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [0],
        },
        **qwen_token_ids(tokenizer),
    )
    model = Qwen3VLForConditionalGeneration(config)
    processor = qwen_processor(Qwen3VLProcessor, tokenizer, patch_size=16, max_pixels=max_pixels)
    return model, processor


def build_llava_next(
    *, hidden: int = 64, layers: int = 2, vision_layers: int = 2, heads: int = 4, image_size: int = 56
) -> tuple[Any, Any]:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tokenizer = llava_tokenizer()
    patch = 14
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    config = LlavaNextConfig(
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
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
    )
    model = LlavaNextForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    return model, processor


_IM_TEMPLATE = role_template(
    bos="",
    user="<|im_start|>user\n",
    assistant="<|im_start|>assistant\n",
    end="<|im_end|>\n",
    image="<image>\n",
)


def build_llava_onevision(
    *, hidden: int = 64, layers: int = 2, vision_layers: int = 2, heads: int = 4, image_size: int = 56
) -> tuple[Any, Any]:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    tokenizer = char_tokenizer(
        ["<|im_start|>", "<image>", "<video>"],
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=_IM_TEMPLATE,
        named={"image_token": "<image>", "video_token": "<video>"},
    )
    patch = 14
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    config = LlavaOnevisionConfig(
        vision_config=vit(
            "siglip_vision_model",
            hidden=hidden,
            layers=vision_layers,
            heads=heads,
            image_size=image_size,
            patch=patch,
        ),
        text_config=llama_text(tokenizer, hidden=hidden, layers=layers, heads=heads, model_type="qwen2"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
    )
    model = LlavaOnevisionForConditionalGeneration(config)
    size = {"height": image_size, "width": image_size}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tokenizer,
        num_image_tokens=(image_size // patch) ** 2,
        vision_feature_select_strategy="full",
        chat_template=_IM_TEMPLATE,
    )
    return model, processor


def build_internvl(
    *, hidden: int = 64, layers: int = 2, vision_layers: int = 2, heads: int = 4, image_size: int = 56
) -> tuple[Any, Any]:
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    named = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    template = role_template(
        bos="",
        user="<|im_start|>user\n",
        assistant="<|im_start|>assistant\n",
        end="<|im_end|>\n",
        image="<IMG_CONTEXT>\n",
    )
    tokenizer = char_tokenizer(
        ["<|im_start|>"], bos=None, eos="<|im_end|>", pad="<|endoftext|>", chat_template=template, named=named
    )
    patch = 14
    seq = (image_size // patch) ** 2 // 4
    config = InternVLConfig(
        vision_config={
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": heads,
            "image_size": [image_size, image_size],
            "patch_size": [patch, patch],
        },
        text_config=llama_text(tokenizer, hidden=hidden, layers=layers, heads=heads, model_type="qwen2"),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=seq,
        tie_word_embeddings=False,
    )
    model = InternVLForConditionalGeneration(config)
    size = {"height": image_size, "width": image_size}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=False),
        video_processor=InternVLVideoProcessor(size=size),
        tokenizer=tokenizer,
        image_seq_length=seq,
        chat_template=template,
    )
    return model, processor


_IDEFICS_SPECIALS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
_IDEFICS_TEMPLATE = role_template(
    bos="<|im_start|>", user="User:", assistant="Assistant:", end="<end_of_utterance>\n", image="<image>"
)


def _build_idefics_like(
    prefix: str,
    *,
    hidden: int = 64,
    layers: int = 2,
    vision_layers: int = 2,
    heads: int = 4,
    image_size: int = 64,
) -> tuple[Any, Any]:
    """Idefics3 and SmolVLM share one architecture; SmolVLM adds a video processor."""
    import transformers

    def cls(suffix: str) -> Any:
        return getattr(transformers, prefix + suffix)

    video = prefix == "SmolVLM"
    tokenizer = char_tokenizer(
        [*_IDEFICS_SPECIALS, *(["<video>"] if video else [])],
        bos="<|im_start|>",
        eos="<end_of_utterance>",
        pad="<|endoftext|>",
        chat_template=_IDEFICS_TEMPLATE,
    )
    patch = 16
    config = cls("Config")(
        vision_config={
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": heads,
            "image_size": image_size,
            "patch_size": patch,
        },
        text_config=llama_text(tokenizer, hidden=hidden, layers=layers, heads=heads),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    model = cls("ForConditionalGeneration")(config)
    size = {"longest_edge": image_size}
    extra = {"video_processor": cls("VideoProcessor")(size=size, max_image_size=size)} if video else {}
    processor = cls("Processor")(
        image_processor=cls("ImageProcessor")(size=size, max_image_size=size, do_image_splitting=False),
        tokenizer=tokenizer,
        image_seq_len=(image_size // patch) ** 2 // 4,
        chat_template=_IDEFICS_TEMPLATE,
        **extra,
    )
    return model, processor


build_idefics3 = functools.partial(_build_idefics_like, "Idefics3")
build_smolvlm = functools.partial(_build_idefics_like, "SmolVLM")


def build_paligemma(
    *, hidden: int = 64, layers: int = 2, vision_layers: int = 2, heads: int = 4, image_size: int = 56
) -> tuple[Any, Any]:
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    # PaliGemma has no chat template: the processor lays out <image>*n <bos> prefix \n.
    tokenizer = char_tokenizer(
        ["<image>"], bos="<bos>", eos="<eos>", pad="<pad>", named={"image_token": "<image>"}
    )
    patch = 14
    seq = (image_size // patch) ** 2
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = seq
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    # The processor adds the <locNNNN>/<segNNN> tokens, so the vocabulary is sized after it.
    text = llama_text(tokenizer, hidden=hidden, layers=layers, heads=heads, model_type="gemma")
    config = PaliGemmaConfig(
        vision_config=vit(
            "siglip_vision_model",
            hidden=hidden,
            layers=vision_layers,
            heads=heads,
            image_size=image_size,
            patch=patch,
        )
        | {"projection_dim": hidden},
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=hidden,
        hidden_size=hidden,
        vocab_size=text["vocab_size"],
    )
    model = PaliGemmaForConditionalGeneration(config)
    return model, processor


def build_gemma3(
    *, hidden: int = 64, layers: int = 2, vision_layers: int = 2, heads: int = 4, image_size: int = 56
) -> tuple[Any, Any]:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
    )

    named = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    template = role_template(
        bos="<bos>",
        user="<start_of_turn>user\n",
        assistant="<start_of_turn>model\n",
        end="<end_of_turn>\n",
        image="<start_of_image>",
    )
    tokenizer = char_tokenizer(
        ["<start_of_turn>", "<end_of_turn>"],
        bos="<bos>",
        eos="<end_of_turn>",
        pad="<pad>",
        chat_template=template,
        named=named,
    )
    patch = 14
    per_side = image_size // patch
    tokens = (per_side // 2) ** 2
    text = llama_text(tokenizer, hidden=hidden, layers=layers, heads=heads, model_type="gemma3_text")
    text.update(
        {
            "sliding_window": 64,
            "query_pre_attn_scalar": hidden // heads,
            "layer_types": ["sliding_attention"] * (layers - 1) + ["full_attention"],
        }
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vit(
            "siglip_vision_model",
            hidden=hidden,
            layers=vision_layers,
            heads=heads,
            image_size=image_size,
            patch=patch,
        ),
        mm_tokens_per_image=tokens,
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        tie_word_embeddings=True,
    )
    model = Gemma3ForConditionalGeneration(config)
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        image_seq_length=tokens,
        chat_template=template,
    )
    return model, processor


# Qwen2-VL-Instruct's own chat template: a default system prompt, and images as
# <|vision_start|><|image_pad|><|vision_end|>.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen2-VL's vocabulary: its special tokens from id 151643 on, 151936 rows in all.
QWEN_FIRST_SPECIAL_ID, QWEN_VOCAB_SIZE = 151643, 151936


def build_qwen2_vl_qwen_ids(
    *, hidden: int = 32, layers: int = 2, vision_layers: int = 1, heads: int = 2
) -> tuple[Any, Any]:
    """A tiny Qwen2-VL that keeps Qwen's special-token ids (the image pad at 151655), its
    vocabulary size and its chat template, as trainers with a Qwen template expect
    (ms-swift expands images at the fixed id 151655). Its own characters take the low ids;
    the embedding is tied to the output, as Qwen2-VL-2B's is, so the checkpoint stays
    about 20 MB. The engine and the exports read it as any Qwen2-VL checkpoint."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLProcessor,
    )

    from vlsweep.demo.tiny import CHARSET, QWEN_SPECIALS

    vocab: dict[str, int] = {}
    for ch in CHARSET:
        vocab.setdefault(ch, len(vocab))
    vocab["<unk>"] = len(vocab)
    vocab.update({t: QWEN_FIRST_SPECIAL_ID + i for i, t in enumerate(QWEN_SPECIALS)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        extra_special_tokens=[t for t in QWEN_SPECIALS if t not in ("<|im_end|>", "<|endoftext|>")],
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        padding_side="left",
    )
    text = qwen_text_config(tokenizer, hidden=hidden, layers=layers, heads=heads)
    text.update(vocab_size=QWEN_VOCAB_SIZE, tie_word_embeddings=True)
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=qwen2_vl_vision_config(hidden=hidden, layers=vision_layers, heads=heads),
        tie_word_embeddings=True,
        **qwen_token_ids(tokenizer),
    )
    model = Qwen2VLForConditionalGeneration(config)
    processor = qwen_processor(Qwen2VLProcessor, tokenizer, patch_size=14, max_pixels=128 * 28 * 28)
    processor.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return model, processor


# Family name (the config's model_type) -> builder of a tiny random checkpoint.
BUILDERS: dict[str, Callable[..., tuple[Any, Any]]] = {
    "qwen2_vl": build_qwen2_vl,
    "qwen2_5_vl": build_qwen2_5_vl,
    "qwen3_vl": build_qwen3_vl,
    "llava": build_llava,
    "llava_next": build_llava_next,
    "llava_onevision": build_llava_onevision,
    "internvl": build_internvl,
    "idefics3": build_idefics3,
    "smolvlm": build_smolvlm,
    "paligemma": build_paligemma,
    "gemma3": build_gemma3,
}


if __name__ == "__main__":  # python -m tests.support.tiny_models qwen2_vl_qwen_ids OUT
    import sys

    import torch

    name, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model, processor = {**BUILDERS, "qwen2_vl_qwen_ids": build_qwen2_vl_qwen_ids}[name]()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    print(f"wrote {name} to {out}")
