"""Will a trial fit: the peak memory of one trial on its device, estimated before any
weights are loaded.

The estimate is the sum of parts, each counted the way the engine allocates it:

- ``weights``: the frozen base in its dtype; with ``model.quantization`` the language
  model's linear layers in 4 or 8 bits with bitsandbytes' block scales;
- ``adapter``, ``gradients``, ``optimizer``: the trained set (LoRA factors by rank and
  target, a projector trained whole as peft's trained copy, a learned loss balance) in
  float32, its gradients, and AdamW's two moments plus a step count per tensor;
- ``activations``: the bytes autograd saves for the backward pass, for the batch size,
  the longest sample (text plus the largest image's tokens) and the attention backend;
  with gradient checkpointing, the inputs each checkpointed layer holds, plus
  ``recompute``, the largest layer re-run during the backward pass;
- ``logits``: the full-vocabulary logits of the batch and, in the backward pass, their
  gradient (never saved by autograd, but alive at the forward/backward boundary);
- an evaluation's parts, which run between steps with the optimizer's state alive: the
  evaluation batch's logits or key-value cache, and its largest layer's working memory;
  the peak is the larger of a training step and an evaluation;
- ``cuda_context`` and ``allocator_slack``: stated constants, not measured (below).

Parts not alive at the same moment (activations are freed as gradients appear) are
added anyway, which leans the total high, the side "will it fit" needs.

How the parts are counted. Accelerate's ``estimate-memory`` counts the weights only (its
``create_empty_model`` + ``calculate_maximum_sizes``), so the rest is ours: the model is
built on the meta device from its config, the LoRA plan the trial would use attached
by peft, and the trained set counted from it exactly. The language model's activations
are traced under ``torch.autograd.graph.saved_tensors_hooks`` with fake CPU tensors
(``FakeTensorMode``: shapes and dtypes, no memory, the CPU's own attention kernels and
autocast), which records what a real forward saves byte for byte. The vision tower
cannot be traced with fake tensors (its patch sequence lengths are data: Qwen2-VL calls
``cu_seqlens.tolist()``), so it runs for real on the CPU with one and then two of its
blocks, at full width, on the data's largest image (a patch-grid tower on three small
grids, taken to that image by the polynomial through them); its depth scales the
per-block difference. ``benchmarks/memory_estimate.py`` checks every part against what a real
trial allocates and saves.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from vlsweep.config import RunConfig
from vlsweep.params import TrialParams
from vlsweep.trials.batching import IGNORE, Encoder
from vlsweep.trials.data import Record
from vlsweep.trials.lora import attach_lora, plan_lora
from vlsweep.trials.modeling import Processing, quantized_skips, resolve_dtype

# torch's CUDA context with its kernels (loaded lazily) and cuBLAS's workspaces: about
# 0.3 to 0.8 GiB on recent GPUs with torch 2.x; stated, not measured (no GPU here).
CUDA_CONTEXT_BYTES = 1 << 30
# The caching allocator rounds blocks up and fragments: this share of the tensors' bytes.
ALLOCATOR_SLACK = 0.10
# bitsandbytes' block sizes: 4-bit weights keep one absmax per 64 values; double
# quantization stores those absmax in 8 bits with one float32 scale per 256 of them.
_BNB4_BLOCK = 64
_BNB4_NESTED_BLOCK = 256


@dataclass(frozen=True)
class Shape:
    """What a trial's activations depend on in the data: the batch of the longest samples."""

    batch_size: int
    seq_len: int  # tokens of the longest sample: prompt, the largest image's tokens, answer
    answer_tokens: int  # tokens that carry the loss in the sample with the longest answer
    image: dict[str, torch.Tensor]  # the processor's inputs for the data's largest image
    image_tokens: int  # the language model's tokens for that image


CONSTANTS = ("cuda_context", "allocator_slack")


@dataclass
class Estimate:
    """One trial configuration's peak memory on its device, in parts (bytes): ``parts``
    those of a training step (with the two stated constants), ``evaluation`` those of an
    evaluation, which runs between steps with the optimizer's state alive. The peak is
    the larger of the two, plus the constants."""

    parts: dict[str, int]
    device: str  # "cuda" or "cpu": what the dtype and the constants assumed
    dtype: torch.dtype
    checkpointing: bool
    params: TrialParams | None = None
    evaluation: dict[str, int] = field(default_factory=dict)
    eval_batch_size: int = 0
    train_workers: int = 1  # data-parallel ranks: the estimate is the main rank's

    @property
    def training(self) -> int:
        return sum(v for k, v in self.parts.items() if k not in CONSTANTS)

    @property
    def tensors(self) -> int:
        """The peak's tensors: the larger of a training step and an evaluation."""
        return max(self.training, sum(self.evaluation.values()))

    @property
    def total(self) -> int:
        return self.tensors + sum(self.parts.get(k, 0) for k in CONSTANTS)

    def lines(self) -> list[str]:
        """The peak, then the training step's and the evaluation's parts, then the
        constants: what ``vlsweep validate`` prints under each configuration."""
        training = {k: v for k, v in self.parts.items() if k not in CONSTANTS}
        constants = {k: v for k, v in self.parts.items() if k in CONSTANTS}
        peak = "evaluation" if sum(self.evaluation.values()) > self.training else "training"
        out = [
            f"{human_bytes(self.total)} at its peak, in {peak}",
            f"training step: {human_bytes(self.training)}: {_listed(training)}",
        ]
        if self.evaluation:
            out.append(
                f"evaluation (eval_batch_size {self.eval_batch_size}): "
                f"{human_bytes(sum(self.evaluation.values()))}: {_listed(self.evaluation)}"
            )
        if any(constants.values()):
            out.append(f"and {_listed(constants)}")
        return out


def _listed(parts: dict[str, int]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {human_bytes(v)}" for k, v in parts.items() if v)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# -- the data's largest trial inputs ---------------------------------------------------------


def data_shape(cfg: RunConfig, records: list[Record], processing: Processing) -> Shape:
    """The batch a trial's memory peaks on: ``budget.batch_size`` samples as long as the
    longest training sample (padding makes every sample of a batch that long), each with
    the data's largest image. Only a few candidates are encoded: the largest images and
    the longest texts."""
    encoder = Encoder(
        processing.processor,
        processing.family,
        processing.codec,
        {t: cfg.data.prompt(t) for t in ("ocr", "grounding")},
    )
    by_area = sorted(records, key=lambda r: r.size[0] * r.size[1], reverse=True)[:2]
    by_text = sorted(records, key=lambda r: len(r.text or "") + len(r.query or "") + len(r.prompt or ""))[-2:]
    encoded = [encoder.encode(rec).full for rec in {id(r): r for r in [*by_area, *by_text]}.values()]
    largest = encoded[0]
    image_tokens = _image_tokens(largest, processing)
    lengths = [int(full["input_ids"].shape[-1]) for full in encoded]
    # The longest text with the largest image: no sample is longer.
    text_tokens = max(n - _image_tokens(full, processing) for n, full in zip(lengths, encoded, strict=True))
    return Shape(
        batch_size=cfg.budget.batch_size,
        seq_len=max(*lengths, text_tokens + image_tokens),
        answer_tokens=max(int((full["labels"] != IGNORE).sum()) for full in encoded),
        image={k: v for k, v in largest.items() if k.startswith(("pixel_", "image_"))},
        image_tokens=image_tokens,
    )


def _image_tokens(full: dict[str, torch.Tensor], processing: Processing) -> int:
    tokenizer = getattr(processing.processor, "tokenizer", processing.processor)
    token = getattr(processing.processor, "image_token", None) or "<image>"
    token_id = tokenizer.convert_tokens_to_ids(token)
    return int((full["input_ids"] == token_id).sum())


# -- the model without weights ----------------------------------------------------------------


def _skeleton(hf_config: Any, attn: str | None, trust_remote_code: bool = False) -> Any:
    """The model on the meta device, as ``modeling.model_skeleton`` builds it, with the
    attention backend the trace runs."""
    from transformers import AutoModelForImageTextToText

    kwargs: dict[str, Any] = {"attn_implementation": attn} if attn else {}
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(
            hf_config, trust_remote_code=trust_remote_code, **kwargs
        )


def _attach(model: torch.nn.Module, cfg: RunConfig, params: TrialParams, groups: dict[str, str]) -> Any:
    """The trial's adapter on ``model`` as the engine attaches it (``Trainer.attach``)."""
    for p in model.parameters():
        p.requires_grad_(False)
    plan = plan_lora(model, groups, params, cfg.lora)
    peft_model = attach_lora(model, plan, params, cfg.lora)
    peft_model.train()
    return peft_model


def trial_dtype(cfg: RunConfig, device: str, local_gpu: bool = True) -> torch.dtype:
    """The dtype a trial computes in on ``device`` (``model.dtype``). For ``auto`` on a GPU
    this machine's GPU decides, as it does for the trial; without one the estimate assumes
    a GPU with bfloat16, as every GPU since Ampere has (float32 on older ones doubles the
    weights and activations: ``vlsweep validate`` says what it assumed)."""
    if device == "cuda" and cfg.model.dtype == "auto" and not (local_gpu and torch.cuda.is_available()):
        return torch.bfloat16
    return resolve_dtype(cfg.model.dtype, torch.device(device))


def _attn_for_trace(cfg: RunConfig) -> str | None:
    # FlashAttention-2 saves the output and the log-sum-exp, as the CPU's SDPA kernel the
    # trace runs does; it has no CPU kernel of its own.
    return "sdpa" if cfg.model.attn_implementation == "flash_attention_2" else cfg.model.attn_implementation


# -- parts ----------------------------------------------------------------------------------


def weight_bytes(model: torch.nn.Module, dtype: torch.dtype, quantized: set[str], q: Any) -> int:
    """The frozen base's bytes: parameters in ``dtype`` (or in bits for the linear layers
    named in ``quantized``), floating buffers in ``dtype`` (integer ones as they are).
    Quantized, the other parameters are float32: peft's k-bit preparation upcasts them."""
    size = dtype.itemsize
    buffer_size = size
    if q is not None:
        size = 4
    total = 0
    seen: set[int] = set()  # a weight shared by two modules (tied embeddings) is one tensor
    for mod_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if mod_name in quantized and name == "weight":
                total += quantized_weight_bytes(p.shape, q)
            else:
                total += p.numel() * (size if p.is_floating_point() else p.element_size())
        for name, b in module.named_buffers(recurse=False):
            if b is not None and name not in module._non_persistent_buffers_set:
                total += b.numel() * (buffer_size if b.is_floating_point() else b.element_size())
    return total


def shard_bytes(
    model: torch.nn.Module, dtype: torch.dtype, workers: int, unit_classes: set[str]
) -> dict[str, int]:
    """What FSDP (``fully_shard`` per layer, then the root) keeps on each of ``workers``
    ranks, in bytes: ``frozen`` the base's parameter shards in ``dtype``, ``buffers`` its
    buffers whole (FSDP does not shard them), ``trained`` the trained parameters' shards
    in float32. A parameter of first dimension d is split into chunks of ceil(d / N)
    rows, and each rank's storage is one such chunk (the last rank's padded). Also the
    whole bytes of the root unit (what no layer holds) and of the largest layer: what a
    rank gathers to compute with."""

    def shard(p: torch.Tensor) -> int:
        rows = p.shape[0] if p.dim() else 1
        return math.ceil(rows / workers) * (p.numel() // max(rows, 1))

    def size(p: torch.Tensor) -> int:
        return 4 if p.requires_grad else (dtype.itemsize if p.is_floating_point() else p.element_size())

    whole = {id(p): p for p in model.parameters()}  # a tied weight once
    frozen = sum(shard(p) * size(p) for p in whole.values() if not p.requires_grad)
    trained = sum(shard(p) * 4 for p in whole.values() if p.requires_grad)
    buffers = sum(
        b.numel() * (dtype.itemsize if b.is_floating_point() else b.element_size()) for b in model.buffers()
    )
    units = [m for m in model.modules() if type(m).__name__ in unit_classes]
    in_units = {id(p) for m in units for p in m.parameters()}
    unit_bytes = [sum(p.numel() * size(p) for p in m.parameters()) for m in units]
    root = sum(p.numel() * size(p) for key, p in whole.items() if key not in in_units)
    return {
        "frozen": frozen,
        "buffers": buffers,
        "trained": trained,
        "root": root,
        "largest_unit": max(unit_bytes, default=0),
    }


def quantized_weight_bytes(shape: torch.Size, q: Any) -> int:
    """A linear weight's bytes in bitsandbytes' 4- or 8-bit storage with its scales."""
    numel = math.prod(shape)
    if q.bits == 8:
        return numel + shape[0] * 4  # int8 values, one float32 scale per output row
    blocks = math.ceil(numel / _BNB4_BLOCK)
    packed = math.ceil(numel / 2) + 16 * 4  # two values a byte, and the 16-value code table
    if not q.double_quant:
        return packed + blocks * 4
    nested = math.ceil(blocks / _BNB4_NESTED_BLOCK)
    # 8-bit absmax, their float32 scales, the nested 256-value code table and the offset
    return packed + blocks + nested * 4 + 256 * 4 + 4


# Loss balances that take one gradient per task (torchjd's Jacobian) before combining them.
PER_TASK_GRADIENTS = ("pcgrad", "upgrad")


def trained_bytes(peft_model: Any, loss_balance: str, n_tasks: int) -> tuple[int, int]:
    """(values, tensors) of the trained set: what AdamW holds state for."""
    trained = [p for p in peft_model.parameters() if p.requires_grad]
    values = sum(p.numel() for p in trained)
    tensors = len(trained)
    if loss_balance == "uncertainty":  # one learned log-variance per task
        values, tensors = values + n_tasks, tensors + 1
    return values, tensors


# -- activations ----------------------------------------------------------------------------


@contextlib.contextmanager
def saved_bytes(model: torch.nn.Module | None = None) -> Iterator[Callable[[], int]]:
    """Count the bytes autograd saves for the backward pass inside the block, each storage
    once (a view of a saved tensor costs nothing more). With gradient checkpointing on
    ``model``'s layers, what a checkpointed layer saves is its own business until its
    re-run; what it holds meanwhile are its inputs, counted here the same way. The
    model's own parameters and buffers (a linear layer saves its weight) are not counted:
    they are the weights and the trained set."""
    seen: dict[int, int] = {}
    own = set()
    if model is not None:
        own = {t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]}

    def note(t: Any) -> None:
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            if storage._cdata not in own:
                seen[storage._cdata] = storage.nbytes()
        elif isinstance(t, (tuple, list)):
            for item in t:
                note(item)

    def pack(t: torch.Tensor) -> torch.Tensor:
        note(t)
        return t

    def hold(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        note(args)
        note(list(kwargs.values()))

    handles = [
        m.register_forward_pre_hook(hold, with_kwargs=True)
        for m in (model.modules() if model is not None else [])
        if getattr(m, "gradient_checkpointing", False) and hasattr(m, "_gradient_checkpointing_func")
    ]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield lambda: sum(seen.values())
    finally:
        for h in handles:
            h.remove()


def _to_fake(model: torch.nn.Module) -> None:
    """Replace every parameter and buffer of a meta model with a fake CPU tensor of its
    shape (inside an active FakeTensorMode: no memory is allocated)."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = torch.nn.Parameter(
                    torch.empty(p.shape, dtype=p.dtype), requires_grad=p.requires_grad
                )
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = torch.empty(b.shape, dtype=b.dtype)


def _quantized_trace_dtype(cfg: RunConfig, dtype: torch.dtype) -> torch.dtype:
    """A quantized base computes with float32 hidden states: peft's k-bit preparation
    upcasts the embeddings and norms, and bitsandbytes' layers cast their outputs back to
    their inputs' dtype. The trace then runs all in float32, an upper bound."""
    return torch.float32 if cfg.model.quantization is not None else dtype


def _autocast(dtype: torch.dtype) -> Any:
    if dtype in (torch.bfloat16, torch.float16):
        return torch.autocast("cpu", dtype=dtype)
    return contextlib.nullcontext()


def _float32_trained(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """The engine keeps the trained copies in float32 under mixed precision."""
    if dtype in (torch.bfloat16, torch.float16):
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()


def language_activations(
    hf_config: Any,
    cfg: RunConfig,
    params: TrialParams,
    groups: dict[str, str],
    shape: Shape,
    dtype: torch.dtype,
    *,
    checkpointing: bool,
    inputs_need_grad: bool,
) -> int:
    """Bytes the language model and the output head save for the backward pass over a
    batch of ``shape``, traced with fake tensors (the image's tokens enter as embeddings)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    model = _skeleton(hf_config, _attn_for_trace(cfg), cfg.model.trust_remote_code)
    dtype = _quantized_trace_dtype(cfg, dtype)
    model.to(dtype)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model = _attach(model, cfg, params, groups)
    _float32_trained(peft_model, dtype)
    hf = peft_model.base_model.model
    hidden = hf_config.get_text_config().hidden_size
    with FakeTensorMode():
        _to_fake(peft_model)
        embeds = torch.empty(shape.batch_size, shape.seq_len, hidden, dtype=dtype)
        embeds.requires_grad_(inputs_need_grad)
        # A batch of mixed lengths is padded: its attention gets an explicit mask (and
        # grouped-query attention's keys and values repeated), the larger case.
        padding = torch.ones(shape.batch_size, shape.seq_len, dtype=torch.long)
        padding[1:, -1] = 0
        with saved_bytes(hf) as total, _autocast(dtype):
            decoder = hf.get_decoder()
            out = decoder(inputs_embeds=embeds, attention_mask=padding, use_cache=False).last_hidden_state
            hf.get_output_embeddings()(out)
        return total()


def loss_activations(hf_config: Any, shape: Shape) -> int:
    """What the engine's loss saves (``losses.task_losses``): the answer-token mask, the
    answer positions, and the float32 log-softmax of the answer tokens' logits; and the
    image-token mask that merging the image features into the text embeddings saves."""
    vocab = hf_config.get_text_config().vocab_size
    answers = shape.batch_size * shape.answer_tokens
    mask = shape.batch_size * (shape.seq_len - 1)
    merge = shape.batch_size * shape.seq_len
    return mask + answers * vocab * 4 + 2 * answers * 8 + merge


def logits_bytes(hf_config: Any, shape: Shape, dtype: torch.dtype) -> int:
    """The batch's logits (or, in the backward pass, their gradient) in the model's dtype,
    and the answer tokens' logits copied out and, from a half dtype, cast to float32 for
    the loss (a float32 tensor's ``.float()`` is itself)."""
    vocab = hf_config.get_text_config().vocab_size
    size = dtype.itemsize
    answers = shape.batch_size * shape.answer_tokens
    cast = 4 if dtype != torch.float32 else 0
    return shape.batch_size * shape.seq_len * vocab * size + answers * vocab * (size + cast)


_DEPTH_KEYS = ("depth", "num_hidden_layers", "num_layers")


def _vision_config(hf_config: Any) -> tuple[Any, str]:
    vision = getattr(hf_config, "vision_config", None)
    if vision is None:
        raise ValueError(f"model type {hf_config.model_type!r} has no vision_config")
    for key in _DEPTH_KEYS:
        if isinstance(getattr(vision, key, None), int):
            return vision, key
    raise ValueError(
        f"the vision config of {hf_config.model_type!r} names its depth with none of {_DEPTH_KEYS}"
    )


def _vision_model(
    hf_config: Any, depth: int, attn: str | None, dtype: torch.dtype, trust_remote_code: bool = False
) -> Any:
    """The model with ``depth`` vision blocks at full width, built for real on the CPU,
    around a language model cut to one narrow layer and a few token ids: the vision
    tower and the projector are as in the trial, and nothing of the language model's
    size is allocated (it is not run here)."""
    from transformers import AutoModelForImageTextToText

    reduced = copy.deepcopy(hf_config)
    vision, key = _vision_config(reduced)
    setattr(vision, key, depth)
    text = reduced.get_text_config()
    text.num_hidden_layers = 1
    text.intermediate_size = 8
    text.vocab_size = 8
    kwargs: dict[str, Any] = {"attn_implementation": attn} if attn else {}
    with torch.random.fork_rng():  # its random weights change no byte count; the caller's RNG stays
        torch.manual_seed(0)
        return AutoModelForImageTextToText.from_config(
            reduced, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
        )


# Square patch grids (sides) a grid-based tower (Qwen-VL's) is traced at: its saved bytes
# are a polynomial of degree two in the number of patches (linear in everything but
# eager attention's scores), so three sizes fix it at any size.
_TRACE_SIDES = (4, 8, 12)


def vision_activations(
    hf_config: Any,
    cfg: RunConfig,
    params: TrialParams,
    groups: dict[str, str],
    shape: Shape,
    dtype: torch.dtype,
    *,
    checkpointing: bool,
    extrapolate: bool = True,
) -> tuple[int, int]:
    """(saved, largest block) bytes of the vision tower and projector over the batch's
    images. The tower runs on the CPU with one and with two blocks at full width, over
    one and two images: the saved bytes are bilinear in depth and images (a batch's
    images can save more than one image's times their number: reshaping a batch of
    features copies them). A tower that takes a patch grid (Qwen-VL's) runs on three
    small grids and the result is taken to the data's largest image by the polynomial
    through them; a fixed-size one runs on the data's image itself. ``largest block`` is
    what one block saves without checkpointing (what its re-run holds in the backward
    pass)."""
    dtype = _quantized_trace_dtype(cfg, dtype)
    _, key = _vision_config(hf_config)
    depth = getattr(hf_config.vision_config, key)
    built = {
        d: _vision_model(hf_config, d, _attn_for_trace(cfg), dtype, cfg.model.trust_remote_code)
        for d in (1, 2)
    }

    def trace(d: int, image: dict[str, torch.Tensor], images: int, ckpt: bool) -> int:
        model = copy.deepcopy(built[d])
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model = _attach(model, cfg, params, groups)
        _float32_trained(peft_model, dtype)
        hf = peft_model.base_model.model
        batch = {
            k: torch.cat([v.to(dtype) if v.is_floating_point() else v] * images) for k, v in image.items()
        }
        with saved_bytes(hf) as total, _autocast(dtype):
            hf.get_image_features(**batch)
        return total()

    def scaled(image: dict[str, torch.Tensor], ckpt: bool) -> tuple[int, int]:
        f11, f21 = trace(1, image, 1, ckpt), trace(2, image, 1, ckpt)
        f12, f22 = trace(1, image, 2, ckpt), trace(2, image, 2, ckpt)
        d, n = depth - 1, shape.batch_size - 1
        tower = f11 + d * (f21 - f11) + n * (f12 - f11) + d * n * (f22 - f21 - f12 + f11)
        block = (f21 - f11) + n * (f22 - f21 - f12 + f11)
        return tower, block

    def at_size(image: dict[str, torch.Tensor]) -> tuple[int, int]:
        saved, block = scaled(image, checkpointing)
        if checkpointing:
            block = scaled(image, False)[1]
        return saved, block

    grid = shape.image.get("image_grid_thw")
    if grid is None or not extrapolate:
        return at_size(shape.image)
    width = shape.image["pixel_values"].shape[-1]
    points = []
    for side in _TRACE_SIDES:
        image = {
            "pixel_values": torch.zeros(side * side, width),
            "image_grid_thw": torch.tensor([[1, side, side]]),
        }
        points.append((side * side, at_size(image)))
    patches = int(grid[0].prod())
    saved = _through([(n, v[0]) for n, v in points], patches)
    block = _through([(n, v[1]) for n, v in points], patches)
    return saved, block


def _through(points: list[tuple[int, int]], x: int) -> int:
    """The value at ``x`` of the polynomial through ``points`` (Lagrange, exact in rationals)."""
    from fractions import Fraction

    total = Fraction(0)
    for i, (xi, yi) in enumerate(points):
        term = Fraction(yi)
        for j, (xj, _) in enumerate(points):
            if j != i:
                term *= Fraction(x - xj, xi - xj)
        total += term
    return round(total)


# -- the estimate ---------------------------------------------------------------------------


def estimate(
    cfg: RunConfig,
    params: TrialParams,
    shape: Shape,
    hf_config: Any,
    groups: dict[str, str],
    *,
    device: str = "cuda",
    n_tasks: int = 2,
    local_gpu: bool = True,
    train_workers: int = 1,
    strategy: str = "ddp",
) -> Estimate:
    """The peak memory of one trial with ``params`` on ``device`` (parts in bytes). With
    ``local_gpu`` false, ``model.dtype: auto`` is taken as bfloat16 whatever GPU this
    machine has (the trials run on another's).

    With ``train_workers`` N > 1 (data-parallel), it is the main rank's, the largest: it
    holds the whole model, trains on its share of the batch (``ceil(batch_size / N)``,
    the larger share) and evaluates alone, at the full ``eval_batch_size``. DDP's
    communication buckets add nothing: the engine makes the gradients views into them
    (``gradient_as_bucket_view``; without it they would be one more copy of the trained
    parameters' gradients).

    With ``strategy`` fsdp every rank holds its shard of each parameter (FSDP splits
    each along its first dimension into N equal parts, the last padded: ``shard_bytes``),
    the trained set's gradients and AdamW state likewise, every rank evaluates, and the
    parameters being computed with are whole: the root unit's (embeddings, output head,
    projector: kept gathered through a step) and two layers' (the one computing and the
    one FSDP prefetches), in ``gathered``."""
    with warnings.catch_warnings():  # transformers' deprecation notes, meant for peft's authors
        warnings.simplefilter("ignore", FutureWarning)
        if train_workers > 1:
            # The main rank's share of the batch (the larger); the evaluation's parts are
            # per eval_batch_size sample, as on one worker.
            shape = dataclasses.replace(shape, batch_size=math.ceil(shape.batch_size / train_workers))
        est = _estimate(
            cfg,
            params,
            shape,
            hf_config,
            groups,
            device=device,
            n_tasks=n_tasks,
            local_gpu=local_gpu,
            sharded_over=train_workers if strategy == "fsdp" and train_workers > 1 else 1,
        )
        est.train_workers = train_workers
        return est


def _estimate(
    cfg: RunConfig,
    params: TrialParams,
    shape: Shape,
    hf_config: Any,
    groups: dict[str, str],
    *,
    device: str,
    n_tasks: int,
    local_gpu: bool,
    sharded_over: int = 1,
) -> Estimate:
    dtype = trial_dtype(cfg, device, local_gpu)
    ckpt = cfg.model.gradient_checkpointing
    q = cfg.model.quantization
    skeleton = _skeleton(hf_config, _attn_for_trace(cfg), cfg.model.trust_remote_code)
    quantized = set(quantized_linears(skeleton, groups)) if q is not None else set()
    peft_model = _attach(skeleton, cfg, params, groups)
    weights = weight_bytes(
        peft_model.base_model.model, dtype, {f"{n}.base_layer" for n in quantized} | quantized, q
    )
    values, tensors = trained_bytes(peft_model, params.loss_balance, n_tasks)
    trains_vision_side = cfg.lora.vision or cfg.lora.projector != "frozen"
    lm = language_activations(
        hf_config,
        cfg,
        params,
        groups,
        shape,
        dtype,
        checkpointing=ckpt,
        inputs_need_grad=trains_vision_side or ckpt,
    )
    vision, vision_block = vision_activations(
        hf_config, cfg, params, groups, shape, dtype, checkpointing=ckpt
    )
    layers = hf_config.get_text_config().num_hidden_layers
    lm_off = lm
    if ckpt:
        lm_off = language_activations(
            hf_config, cfg, params, groups, shape, dtype, checkpointing=False, inputs_need_grad=True
        )
    recompute = max((lm_off - lm) // layers, vision_block) if ckpt else 0
    gradient_copies = n_tasks + 1 if params.loss_balance in PER_TASK_GRADIENTS else 1
    parts = {
        "weights": weights,
        "adapter": values * 4,
        # A Jacobian balance holds one gradient per task (torchjd's Jacobians) and the
        # combined one.
        "gradients": values * 4 * gradient_copies,
        "optimizer": values * 8 + tensors * 4,
        "activations": lm + vision + loss_activations(hf_config, shape),
        "recompute": recompute,
        "logits": logits_bytes(hf_config, shape, dtype),
    }
    if sharded_over > 1:
        shards = shard_bytes(peft_model, dtype, sharded_over, set(getattr(skeleton, "_no_split_modules", [])))
        parts["weights"] = shards["frozen"] + shards["buffers"]
        parts["adapter"] = shards["trained"]
        parts["gradients"] = shards["trained"] * gradient_copies
        parts["optimizer"] = shards["trained"] * 2 + tensors * 4
        parts["gathered"] = shards["root"] + 2 * shards["largest_unit"]
    evaluation = evaluation_parts(
        hf_config, cfg, shape, dtype, parts, layer=max(lm_off // layers, vision_block)
    )
    if sharded_over > 1:
        evaluation["gathered"] = parts["gathered"]
    estimate = Estimate(
        parts=parts,
        device=device,
        dtype=dtype,
        checkpointing=ckpt,
        params=params,
        evaluation=evaluation,
        eval_batch_size=cfg.budget.eval_batch_size,
    )
    _constants(estimate, device)
    return estimate


def _constants(estimate: Estimate, device: str) -> None:
    """The stated constants, after the tensors (the slack is a share of them)."""
    parts = estimate.parts
    parts.pop("cuda_context", None)
    parts.pop("allocator_slack", None)
    parts["cuda_context"] = CUDA_CONTEXT_BYTES if device == "cuda" else 0
    parts["allocator_slack"] = round(ALLOCATOR_SLACK * estimate.tensors) if device == "cuda" else 0


def evaluation_parts(
    hf_config: Any, cfg: RunConfig, shape: Shape, dtype: torch.dtype, training: dict[str, int], *, layer: int
) -> dict[str, int]:
    """An evaluation's parts: it runs between steps, so the weights, the adapter and the
    optimizer's state are alive (the gradients are freed); without gradients, for
    ``budget.eval_batch_size`` samples, the validation loss's full-vocabulary logits (and
    the answers' float32 log-softmax), or the generation's key-value cache, whichever is
    larger (``outputs``); and ``forward``, the largest layer's working memory, taken as
    what that layer saves for a backward pass at the training batch, scaled to the
    evaluation batch (a layer without gradients frees as it goes: an upper bound)."""
    text = hf_config.get_text_config()
    batch = cfg.budget.eval_batch_size
    evaluated = dataclasses.replace(shape, batch_size=batch)
    val_loss = logits_bytes(hf_config, evaluated, dtype) + batch * shape.answer_tokens * text.vocab_size * 4
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    tokens = shape.seq_len + cfg.budget.max_new_tokens
    # A quantized base's hidden states, and so its keys and values, are float32 (peft's
    # k-bit preparation), as its trace is.
    size = _quantized_trace_dtype(cfg, dtype).itemsize
    kv_cache = batch * tokens * text.num_hidden_layers * 2 * kv_heads * head_dim * size
    return {
        "weights": training["weights"],
        "adapter": training["adapter"],
        "optimizer": training["optimizer"],
        "outputs": max(val_loss, kv_cache),
        "forward": math.ceil(layer * batch / shape.batch_size),
    }


def quantized_linears(model: torch.nn.Module, groups: dict[str, str]) -> list[str]:
    """The linear layers ``model.quantization`` puts in 4 or 8 bits: the language model's,
    but not its output head (``modeling.quantized_skips`` says why)."""
    skips = quantized_skips(model, groups)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and not any(name == s or name.startswith(s + ".") for s in skips)
    ]
