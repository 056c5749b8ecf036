"""Loading a base model and its processor: a Hub id or a local checkpoint directory.

A ``builtin:NAME`` model is resolved to its shipped checkpoint before it gets here
(``vlsweep.demo.resolve``): the engine loads paths and Hub ids only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlsweep.config import BUILTIN, ModelConfig
from vlsweep.errors import UserInputError
from vlsweep.trials.codecs import CODECS, BoxCodec
from vlsweep.trials.families import Family, family_for


@dataclass
class Base:
    """A loaded base model with what the engine needs to drive it.

    ``codec`` is the box format a trial on this base trains its grounding answers in and
    reads them back in: ``model.box_codec``, else the family's. A caller that passes the
    base to ``run_trial`` may give answers in a format of its own, without touching
    ``CODECS``: ``dataclasses.replace(base, codec=BoxCodec(name, encode, decode))``."""

    model: Any
    processor: Any
    model_type: str
    family: Family | None
    groups: dict[str, str]  # module group -> regex
    codec: BoxCodec
    device: torch.device
    source: str  # the resolved path or Hub id that was loaded
    # The dtype the model computes in: its weights' (or, quantized, the unquantized
    # modules' and the 4-bit layers' compute dtype). Mixed precision follows it.
    dtype: torch.dtype = torch.float32


@dataclass
class Processing:
    """What turns records into a model's inputs and answers, without the model's weights:
    enough to write a dataset in another trainer's format."""

    processor: Any
    model_type: str
    family: Family | None
    codec: BoxCodec


def load_processing(cfg: ModelConfig) -> Processing:
    """The checkpoint's processor, family and box codec (no weights are loaded)."""
    from transformers import AutoConfig, AutoProcessor

    source = resolve_source(cfg)
    common: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code, "revision": cfg.revision}
    try:
        hf_config = AutoConfig.from_pretrained(source, **common)
        processor = AutoProcessor.from_pretrained(source, **common)
    except OSError as exc:
        raise UserInputError(
            f"model.name_or_path: cannot load the processor of {cfg.name_or_path!r} "
            f"({str(exc).splitlines()[0]})"
        ) from None
    family = family_for(hf_config.model_type)
    return Processing(processor, hf_config.model_type, family, _codec(cfg, family))


def _codec(cfg: ModelConfig, family: Family | None) -> BoxCodec:
    return CODECS[cfg.box_codec or (family.box_codec if family else "generic")]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserInputError(
            f"model.device: {name!r} is not a torch device (use auto, cpu or cuda)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(
            f"model.device: {name!r} asked for, but no CUDA device is available (use device: auto or cpu)"
        )
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _safetensors_check(path: Path, allow_pickle: bool) -> None:
    if allow_pickle or not path.is_dir():
        return
    has_safe = any(path.glob("*.safetensors"))
    has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth"))
    if has_pickle and not has_safe:
        raise UserInputError(
            f"model.name_or_path: {path} holds only pickle weight files (.bin/.pt), which can run "
            "code when loaded; convert them to safetensors, or set model.allow_pickle: true if "
            "you trust the files"
        )


def check_model(cfg: ModelConfig) -> None:
    """What can be known about the model before a sweep starts, without loading weights:
    a local checkpoint exists, has safetensors weights (or ``allow_pickle``) and a
    readable config that needs no custom code unless ``trust_remote_code``. A Hub id is
    left to the workers, which may reach the Hub."""
    resolve_source(cfg)  # refuses a builtin name
    source = cfg.name_or_path
    path = Path(source).expanduser()
    if not path.exists():
        if source.startswith((".", "/", "~")):
            raise UserInputError(f"model.name_or_path: directory {source} does not exist")
        return
    if not (path / "config.json").is_file():
        raise UserInputError(
            f"model.name_or_path: {path} has no config.json; give a checkpoint directory "
            "saved with save_pretrained"
        )
    _safetensors_check(path, cfg.allow_pickle)
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(path), trust_remote_code=cfg.trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise UserInputError(
                f"model.name_or_path: {source!r} needs custom code; set "
                "model.trust_remote_code: true only if you trust its repository"
            ) from None
        raise UserInputError(
            f"model.name_or_path: {path / 'config.json'}: {str(exc).splitlines()[0]}"
        ) from None
    except (OSError, KeyError) as exc:
        raise UserInputError(
            f"model.name_or_path: cannot read {path / 'config.json'} ({str(exc).splitlines()[0]})"
        ) from None


def load_base(cfg: ModelConfig) -> Base:
    """Load the model and processor through the Auto classes, as for any checkpoint: the
    checks, the files (``_load_pretrained``), the placement (``_place``), then what the
    engine needs to know of the model (family, module groups, answer codec)."""
    check_model(cfg)  # the same checks `vlsweep launch` makes before a sweep
    source = resolve_source(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    hf_config, processor, model = _load_pretrained(cfg, source, dtype, device)
    _place(model, cfg, device)
    family = family_for(hf_config.model_type)
    return Base(
        model=model,
        processor=processor,
        model_type=hf_config.model_type,
        family=family,
        groups=module_groups(cfg, hf_config.model_type),
        codec=_codec(cfg, family),
        device=device,
        source=source,
        dtype=dtype,
    )


def _load_pretrained(
    cfg: ModelConfig, source: str, dtype: torch.dtype, device: torch.device
) -> tuple[Any, Any, Any]:
    """The checkpoint's config, processor and model, in ``dtype`` (and, with
    ``quantization``, its language model in bits, on ``device``); a checkpoint that cannot
    be loaded is the user's error, said with the key to change."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    common: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code, "revision": cfg.revision}
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": None if cfg.allow_pickle else True}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.quantization is not None:
        kwargs["quantization_config"] = bnb_config(cfg, dtype)
        # bitsandbytes quantizes as the weights load, onto the device they load to.
        kwargs["device_map"] = {"": str(device)}
    try:
        hf_config = AutoConfig.from_pretrained(source, **common)
        processor = AutoProcessor.from_pretrained(source, **common)
        model = AutoModelForImageTextToText.from_pretrained(source, **common, **kwargs)
    except OSError as exc:
        raise UserInputError(
            f"model.name_or_path: cannot load {cfg.name_or_path!r} ({str(exc).splitlines()[0]}); "
            "give a local checkpoint directory or a Hub id reachable from this machine"
        ) from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise UserInputError(
                f"model.name_or_path: {cfg.name_or_path!r} needs custom code; set "
                "model.trust_remote_code: true only if you trust its repository"
            ) from None
        raise
    return hf_config, processor, model


def _place(model: Any, cfg: ModelConfig, device: torch.device) -> None:
    """The whole model on one device, with gradient checkpointing when asked. A quantized
    model is already there (bitsandbytes' layers cannot move) and gets peft's k-bit
    preparation."""
    if cfg.quantization is not None:
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        model.config.use_cache = not cfg.gradient_checkpointing
        if device.type == "cpu":
            _no_cpu_packing(model)
        return
    model.to(device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False


def _no_cpu_packing(model: Any) -> None:
    """Keep bitsandbytes' 4-bit layers in their trainable format on the CPU.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit weight in place for a
    faster kernel the first time the layer runs in eval mode without gradients (a trial's
    evaluation), and the layer then stays repacked: the next training step fails ("a view
    of a leaf Variable that requires grad is being used in an in-place operation"), and
    the repacking itself fails for an input width that is not a multiple of its block
    size of 64 (seen here on an Intel Xeon; AMD EPYC CPUs without AVX512-BF16 never take
    that path). A trial alternates training and evaluation, so the repacking is switched
    off per layer with the flag bitsandbytes reads for it; the kernels it then uses are
    the ones every other CPU runs."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def bnb_config(cfg: ModelConfig, dtype: torch.dtype) -> Any:
    """transformers' ``BitsAndBytesConfig`` for ``model.quantization``, with the modules
    kept out of it (``quantized_skips``) named exactly."""
    import re

    from transformers import BitsAndBytesConfig

    q = cfg.quantization
    assert q is not None
    skeleton, _, groups = model_skeleton(cfg)
    skips = [re.escape(name) for name in quantized_skips(skeleton, groups)]
    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skips)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=dtype,
        llm_int8_skip_modules=skips,
    )


def quantized_skips(model: torch.nn.Module, groups: dict[str, str]) -> list[str]:
    """The modules ``model.quantization`` leaves in the model's dtype: the vision tower and
    the projector (the top-most modules wholly in those groups), and the output head.

    The projector may be trained whole (``lora.projector: full``), which needs floating
    weights. The vision tower is kept too, as ms-swift keeps it: it is small beside the
    language models quantization is for (Qwen2-VL's 675M parameters against 7B or 72B),
    OCR reads fine glyphs through it, and its learning rate is one the sweep tunes. The
    output head maps to the whole vocabulary and is kept, as transformers keeps it."""
    from vlsweep.trials.families import compile_groups
    from vlsweep.trials.lora import module_group_of

    compiled = compile_groups({g: groups[g] for g in ("vision", "projector")})
    roots: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(r + ".") for r in roots):
            continue
        names = [f"{name}.{p}" for p, _ in module.named_parameters()]
        if names and all(module_group_of(n, compiled) for n in names):
            roots.append(name)
    head = model.get_output_embeddings()  # type: ignore[operator]  # a transformers model
    roots += [name for name, module in model.named_modules() if module is head]
    return roots


def module_groups(cfg: ModelConfig, model_type: str) -> dict[str, str]:
    """The vision / projector / llm regexes for a model type: the family's map, with the
    config's ``module_groups`` over it."""
    family = family_for(model_type)
    if cfg.module_groups:
        groups: dict[str, str] = {str(k): v for k, v in cfg.module_groups.items()}
        missing = [g for g in ("vision", "projector", "llm") if g not in groups]
        if missing and family is None:
            raise UserInputError(
                f"model.module_groups: give a regex for {missing}: vlsweep has "
                f"no module map for model type {model_type!r}"
            )
        return {**family.groups, **groups} if family is not None else groups
    if family is None:
        raise UserInputError(
            f"model.name_or_path: vlsweep has no module map for model type {model_type!r}; "
            "set model.module_groups with one regex each for vision, projector and llm"
        )
    return dict(family.groups)


def resolve_source(cfg: ModelConfig) -> str:
    """The checkpoint directory (expanded) or Hub id ``name_or_path`` stands for."""
    source = cfg.name_or_path
    if source.startswith(BUILTIN):
        raise UserInputError(
            f"model.name_or_path: {source!r} is a builtin model: resolve it to its checkpoint "
            "with vlsweep.demo.resolve before loading it"
        )
    path = Path(source).expanduser()
    return str(path) if path.exists() else source


def model_skeleton(cfg: ModelConfig) -> tuple[torch.nn.Module, str, dict[str, str]]:
    """The model's modules without its weights (meta device): enough to plan LoRA targets
    for an export without loading gigabytes. Returns (model, model_type, groups)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    source = resolve_source(cfg)
    try:
        hf_config = AutoConfig.from_pretrained(
            source, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision
        )
    except OSError as exc:
        raise UserInputError(
            f"model.name_or_path: cannot read the config of {cfg.name_or_path!r} ({str(exc).splitlines()[0]})"
        ) from None
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(hf_config, trust_remote_code=cfg.trust_remote_code)
    return model, hf_config.model_type, module_groups(cfg, hf_config.model_type)
