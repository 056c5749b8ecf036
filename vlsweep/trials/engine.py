"""One short multi-task LoRA fine-tune, scored by OCR CER and localization IoU.

``run_trial(params, budget, report, cfg=..., data=...)`` is the engine's one entry point.
It knows nothing of Ray or Optuna: it calls ``report(step, metrics)`` at each evaluation
point and returns the final metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlsweep.config import DEMO_DATA, BudgetConfig, DataConfig, TrainConfig
from vlsweep.errors import TrialOutOfMemory, UserInputError
from vlsweep.metrics import Evaluation, compute
from vlsweep.params import GROUP_LR, TrialParams
from vlsweep.trials import checkpoints, forgetting
from vlsweep.trials.batching import Encoder, collate
from vlsweep.trials.data import Record, TaskMixer, check_tasks, load_records, make_mixer
from vlsweep.trials.families import resolve_groups
from vlsweep.trials.lora import attach_lora, plan_lora
from vlsweep.trials.losses import BALANCES, task_losses, task_sums, weighted_sum
from vlsweep.trials.modeling import Base, load_base, resolve_device
from vlsweep.trials.optim import build_param_groups, group_grad_norms, make_optimizer
from vlsweep.trials.ranks import Ranks

Report = Callable[[int, dict[str, float]], None]


@dataclass
class TrialData:
    train: list[Record]
    val: list[Record]
    # The retention set forgetting is measured on (data.retain; empty: not measured).
    retain: list[Record] = field(default_factory=list)

    @property
    def tasks(self) -> list[str]:
        # Training data and validation data hold the same tasks (load_data checks); data
        # for scoring alone has validation records only.
        return sorted({r.task for r in self.train} or {r.task for r in self.val})


def _resolve(path: str, base_dir: Path) -> Path:
    if path.startswith(DEMO_DATA):
        raise UserInputError(
            f"data: {path!r} is the builtin demo data: resolve it to its cached files with "
            "vlsweep.demo.resolve before loading it"
        )
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir / p


def load_data(
    cfg: DataConfig, base_dir: Path, splits_wanted: tuple[str, ...] = ("train", "val", "retain")
) -> TrialData:
    """Load and check every record of every file; raises UserInputError listing all problems.
    ``splits_wanted=("val",)`` loads the validation data alone (for scoring)."""
    problems: list[str] = []
    splits: dict[str, list[Record]] = {"train": [], "val": [], "retain": []}
    for split in splits_wanted:
        records: list[Record] = []
        for src in getattr(cfg, split):
            path = _resolve(src.path, base_dir)
            recs, errs = load_records(path, format=src.format, task=src.task, box_format=src.box_format)
            if src.format == "vlsweep" and src.task is not None:
                recs = [r for r in recs if r.task == src.task]
            records.extend(recs)
            problems.extend(errs)
        splits[split] = records
    if not problems and {"train", "val"} <= set(splits_wanted):
        tasks = sorted({r.task for r in splits["train"]} | {r.task for r in splits["val"]})
        problems += check_tasks(splits["train"], "data.train", tasks)
        problems += check_tasks(splits["val"], "data.val", tasks)
    if problems:
        raise UserInputError(problems)
    val = splits["val"][: cfg.max_val_samples] if cfg.max_val_samples else splits["val"]
    return TrialData(train=splits["train"], val=val, retain=splits["retain"])


class Trainer:
    """The state of one trial: model with a fresh adapter, optimizer, encoded data.

    On several train workers (``ranks``) each rank trains on its share of every global
    batch through torch's DistributedDataParallel, and the main rank alone evaluates
    (``vlsweep.trials.ranks`` says how the update stays the one-worker one)."""

    def __init__(
        self,
        params: TrialParams,
        budget: BudgetConfig,
        *,
        cfg: TrainConfig,
        data: TrialData,
        base: Base,
        ranks: Ranks | None = None,
    ):
        self.params, self.budget, self.cfg, self.data, self.base = params, budget, cfg, data, base
        self.ranks = ranks or Ranks()
        # Where the trial computes: the base's device, or for a sharded trial (whose base
        # was loaded on the CPU) the device the model config names.
        self.compute_device = resolve_device(cfg.model.device) if self.ranks.sharded else base.device
        self.tasks = data.tasks
        self.task_index = {t: i for i, t in enumerate(self.tasks)}
        weights = params.weights_for(self.tasks)
        device = self.compute_device
        self.weights = torch.tensor([weights[t] for t in self.tasks], device=device)
        self.balance = BALANCES[params.loss_balance](len(self.tasks), self.weights, cfg.loss).to(device)
        self.balance.ranks, self.balance.seed = self.ranks, cfg.seed
        # Mixed precision, as LLaMA-Factory and the HF Trainer train LoRA: the frozen base in
        # the model's half dtype, the trained parameters in float32, the forward pass under
        # autocast; float16 adds a loss scaler (its gradients underflow without one).
        dtype = base.dtype
        self.amp_dtype = dtype if dtype in (torch.bfloat16, torch.float16) else None
        self.scaler: torch.amp.GradScaler | None = None
        if dtype == torch.float16:
            if not self.balance.scale_equivariant:
                raise UserInputError(
                    f"model.dtype: float16 trains with a loss scaler, which would change what "
                    f"loss_balance {params.loss_balance!r} optimizes; use bfloat16 (on a GPU that has "
                    "it) or float32, or another loss_balance"
                )
            self.scaler = torch.amp.GradScaler(device.type)
        # The LLM's LoRA stays still for the first steps (progressive training).
        self.vision_first_steps = round(params.vision_first_ratio * budget.steps)
        self.steps_done = 0
        self.encoder = Encoder(
            base.processor, base.family, base.codec, {t: cfg.data.prompt(t) for t in ("ocr", "grounding")}
        )
        tok = self.encoder.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.eos_ids = self._eos_ids()
        t0 = time.perf_counter()
        self.train_enc = [self.encoder.encode(r) for r in data.train]
        self.val_enc = [self.encoder.encode(r) for r in data.val]
        self.retain_enc = [self.encoder.encode(r) for r in data.retain]
        # The base's answers on the retention set (forgetting.Reference), set by run_trial.
        self.reference: forgetting.Reference | None = None
        self.encode_seconds = time.perf_counter() - t0
        self.last_predictions: list[str] = []
        self.model: Any = None
        # The model as the ranks train it (DDP around ``model``); None on one worker.
        self.ddp: Any = None
        self.groups: list[dict[str, Any]] = []

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        gen = getattr(self.base.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        for v in eos if isinstance(eos, list) else [eos]:
            if v is not None:
                ids.add(int(v))
        if self.encoder.tokenizer.eos_token_id is not None:
            ids.add(self.encoder.tokenizer.eos_token_id)
        turn_end = self.encoder.tokenizer(self.encoder.turn_end, add_special_tokens=False)["input_ids"]
        if turn_end:
            ids.add(turn_end[0])
        return ids

    # -- setup -------------------------------------------------------------------------------

    def attach(self) -> None:
        """Put a fresh LoRA adapter on the base model and build the optimizer."""
        torch.manual_seed(self.cfg.seed)
        model = self.base.model
        for p in model.parameters():
            p.requires_grad_(False)
        plan = plan_lora(model, self.base.groups, self.params, self.cfg.lora)
        self.plan = plan
        self.model = attach_lora(model, plan, self.params, self.cfg.lora)
        if self.amp_dtype is not None:
            # The trained copies (LoRA factors, a projector trained whole) in float32: AdamW's
            # small updates would round away in a half dtype. detach() drops them again.
            for p in self.model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        if self.cfg.model.gradient_checkpointing:
            self.model.enable_input_require_grads()
        if self.ranks.sharded:
            self._shard()  # before the optimizer: it steps the sharded parameters
        named = list(self.model.named_parameters())
        trainable = {n for n, p in named if p.requires_grad}
        group_of = resolve_groups([n for n, _ in named], self.base.groups, trainable=trainable)
        lrs = {g: self.params.lr_for(g) for g in GROUP_LR}
        group_of = {n: g for n, g in group_of.items() if n in trainable}
        # A learnable balance's parameters (uncertainty's log-variances): a group of their own.
        balance = self.balance.trainable()
        named += balance
        group_of.update({n: "balance" for n, _ in balance})
        lrs["balance"] = self.cfg.loss.balance_lr
        self.groups = build_param_groups(
            named,
            group_of,
            lrs,
            weight_decay=self.cfg.optim.weight_decay,
            loraplus_lr_ratio=self.cfg.lora.loraplus_lr_ratio,
        )
        owned = {id(p) for p in self.balance.owned()}  # FAMO steps its logits itself
        if owned & {id(p) for g in self.groups for p in g["params"]}:
            raise AssertionError("a parameter the balance steps itself is in the trial's optimizer")
        self.optimizer = make_optimizer(self.groups, betas=self.cfg.optim.betas, eps=self.cfg.optim.eps)
        if self.ranks.world > 1 and not self.ranks.sharded and not self.balance.combines_task_gradients:
            from torch.nn.parallel import DistributedDataParallel

            device = self.base.device
            # The gradients as views into DDP's communication buckets: no second copy of them.
            # No broadcast of the model from rank 0: every rank loaded the same base and
            # seeded the adapter alike (for a 7B, a broadcast would move 15 GB per trial).
            self.ddp = DistributedDataParallel(
                self.model,
                device_ids=[device] if device.type == "cuda" else None,
                gradient_as_bucket_view=True,
                init_sync=False,
            )
        from transformers import get_cosine_schedule_with_warmup

        steps = self.budget.steps
        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, self.params.warmup_steps(steps), steps
        )

    def _shard(self) -> None:
        """FSDP (torch's ``fully_shard``): each of the model's layers (the classes it names
        as never to be split, ``_no_split_modules``) a unit whose parameters are spread
        over the ranks and all-gathered while it computes, then the rest of the model.
        Every parameter is sharded where it lives on this rank; the base was loaded on the
        CPU (``load_for``) and each unit moves to the trial's device as it is sharded, so no
        rank ever holds the whole base on its GPU. ``generate`` all-gathers too."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        device = self.compute_device
        names = set(getattr(self.base.model, "_no_split_modules", None) or [])
        units = [m for m in self.model.modules() if type(m).__name__ in names]
        if not units:
            raise UserInputError(
                f"resources.strategy: fsdp shards a model by its layers, and {self.base.source} names "
                "none (transformers' _no_split_modules); use resources.strategy: ddp"
            )
        mesh = init_device_mesh(device.type, (self.ranks.world,))
        for unit in units:
            fully_shard(unit, mesh=mesh)
        fully_shard(self.model, mesh=mesh)
        register_fsdp_forward_method(self.model, "generate")
        if device != self.base.device:
            self.base = dataclasses.replace(self.base, device=device)

    def full_adapter_state(self) -> dict[str, torch.Tensor] | None:
        """The trained parameters whole, gathered from the ranks (a collective: every rank
        calls it; only sharded trials need it), on the CPU."""
        if not self.ranks.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        state = get_model_state_dict(self.model, options=options)
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}

    def detach(self) -> Any:
        """Remove the adapter, returning the base model untouched for the next trial.

        peft's ``unload()`` keeps the *trained* copy of every ``modules_to_save`` module
        (merge semantics), so the original modules are put back first: otherwise a fully
        trained projector would leak into the next trial's base model.
        """
        from peft.utils.other import ModulesToSaveWrapper

        wrappers = [
            (name, mod) for name, mod in self.model.named_modules() if isinstance(mod, ModulesToSaveWrapper)
        ]
        for name, wrapper in wrappers:
            parent_name, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent_name), child, wrapper.original_module)
        self.ddp = None  # its gradient hooks are on the adapter's parameters, gone with them
        base = self.model.unload()
        for p in base.parameters():
            p.requires_grad_(False)
        self.model = None
        return base

    # -- training ----------------------------------------------------------------------------

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dtype = self.base.dtype
        out = {}
        for k, v in batch.items():
            v = v.to(self.base.device, non_blocking=True)
            out[k] = v.to(dtype) if v.is_floating_point() else v
        return out

    def train_batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = collate([self.train_enc[i].full for i in indices], pad_id=self.pad_id, left=False)
        batch["task_ids"] = torch.tensor([self.task_index[self.data.train[i].task] for i in indices])
        return batch

    def step(self, batch: dict[str, torch.Tensor], step: int | None = None) -> dict[str, Any]:
        """One optimizer step on ``batch``; ``step`` (1-based) is counted here when not given."""
        step = self.steps_done + 1 if step is None else step
        self.steps_done = step
        batch = self._to_device(batch)
        labels, task_ids = batch.pop("labels"), batch.pop("task_ids")
        # On several ranks DDP sums the gradients of a plain backward; a Jacobian balance
        # averages each task's gradient over the ranks itself, before combining them (and
        # has no DDP around its model).
        model = self.model if self.ddp is None else self.ddp
        with self._autocast():
            logits = model(**batch, use_cache=False).logits
        # Each task's mean over the global batch (on one worker: this batch), in float32.
        means, counts = self.ranks.global_means(*task_sums(logits, labels, task_ids, len(self.tasks)))
        del logits
        vision_only = step <= self.vision_first_steps
        model_groups = [g for g in self.groups if g["module_group"] != "balance"]
        # During the vision-first phase a Jacobian balance combines the vision side's task
        # gradients alone: the update applied is the one its guarantee is about.
        inputs = [
            p for g in self.groups if not (vision_only and g["module_group"] == "llm") for p in g["params"]
        ]
        if self.scaler is None:
            objective = self.balance.backward(means, counts, inputs)
        else:  # every task loss times the scale: the balance's gradient times it (scale_equivariant)
            objective = self.balance.backward(self.scaler.scale(means), counts, inputs)
            objective = objective / self.scaler.get_scale()
        per_task = means.detach()
        if vision_only:
            # AdamW skips a parameter without a gradient: no step, no moment update.
            for g in self.groups:
                if g["module_group"] == "llm":
                    for p in g["params"]:
                        p.grad = None
        if self.scaler is not None:
            # After the LLM's gradients are dropped: an overflow there must not skip the step.
            self.scaler.unscale_(self.optimizer)
        # Clipping and the total norm are the model's: a balance's own parameters (the
        # uncertainty log-variances) are logged apart and never scale the model's update.
        norms, total = group_grad_norms(model_groups)
        norms.update(group_grad_norms([g for g in self.groups if g["module_group"] == "balance"])[0])
        max_norm = self.cfg.optim.max_grad_norm
        if max_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(
                [p for g in model_groups for p in g["params"]], max_norm, total
            )
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)  # skipped when a gradient overflowed
            self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.balance.needs_losses_after_step:
            with torch.no_grad(), self._autocast():
                logits = self.model(**batch, use_cache=False).logits
                self.balance.after_step(
                    *self.ranks.global_means(*task_sums(logits, labels, task_ids, len(self.tasks)))
                )
        return {
            # The same combination for every balance (comparable curves); the balance's
            # own objective apart.
            "loss": weighted_sum(per_task, self.weights),
            "objective": objective.detach(),
            "per_task": per_task,
            "weights": self.balance.last_weights,
            "grad_norm": norms,
            "grad_norm_total": total,
        }

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.base.device.type, dtype=self.amp_dtype)

    # -- evaluation --------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model: Any | None = None) -> dict[str, float]:
        """Greedy generation on the validation set, and teacher-forced per-task loss."""
        model = model if model is not None else self.model
        was_training = model.training
        model.eval()
        try:
            with self._autocast():  # float32 trained parts meet the half-dtype base
                texts = self._generate(model)
                self.last_predictions = texts
                evaluation = self._evaluation(texts, self._val_loss(model))
                if self.reference is not None:
                    evaluation.forgetting = float(self._retain_kl(model).mean())
            metrics = compute(evaluation)
        finally:
            model.train(was_training)
        return metrics

    def predictions_jsonl(self) -> str:
        """The last evaluation's answers next to the references, one JSON line per val sample."""
        rows = []
        for text, rec, enc in zip(self.last_predictions, self.data.val, self.val_enc, strict=True):
            rows.append(
                json.dumps(
                    {
                        "image": str(rec.image),
                        "task": rec.task,
                        "query": rec.query,
                        "label": enc.answer,
                        "predict": text,
                    }
                )
            )
        return "".join(r + "\n" for r in rows)

    def _generate(self, model: Any) -> list[str]:
        tok = self.encoder.tokenizer
        out: list[str] = [""] * len(self.val_enc)
        # Sort by prompt length so a batch pads little; results go back by index.
        order = sorted(range(len(self.val_enc)), key=lambda i: self.val_enc[i].prompt["input_ids"].shape[1])
        bs = self.budget.eval_batch_size
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            batch = self._to_device(
                collate([self.val_enc[i].prompt for i in idx], pad_id=self.pad_id, left=True)
            )
            n = batch["input_ids"].shape[1]
            gen = model.generate(
                **batch,
                max_new_tokens=self.budget.max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.eos_ids),
                use_cache=True,
                # A sharded model's ranks must take as many decoding steps each (each step
                # all-gathers): one that finished early keeps stepping until all have.
                synced_gpus=self.ranks.sharded,
            )
            for row, i in zip(gen[:, n:].tolist(), idx, strict=True):
                cut = next((k for k, t in enumerate(row) if t in self.eos_ids), len(row))
                keep_special = self.data.val[i].task == "grounding"
                out[i] = tok.decode(row[:cut], skip_special_tokens=not keep_special).strip()
        return out

    def _evaluation(self, texts: list[str], val_loss: dict[str, float]) -> Evaluation:
        """The answers next to their references, per task, with boxes decoded."""
        ev = Evaluation(val_loss=val_loss)
        for text, rec, enc in zip(texts, self.data.val, self.val_enc, strict=True):
            if rec.task == "ocr":
                ev.ocr.append((text, rec.text or ""))
            elif rec.task == "grounding" and rec.box is not None:
                ev.grounding.append((self.base.codec.decode(text, rec.size, enc.resized), rec.box))
        return ev

    def _retain_log_probs(self, model: Any) -> torch.Tensor:
        """The model's log-probabilities of each answer token of the retention set."""
        rows = []
        bs = self.budget.eval_batch_size
        for start in range(0, len(self.retain_enc), bs):
            batch = collate(
                [e.full for e in self.retain_enc[start : start + bs]], pad_id=self.pad_id, left=False
            )
            batch = self._to_device(batch)
            labels = batch.pop("labels")
            rows.append(forgetting.answer_log_probs(model(**batch, use_cache=False).logits, labels))
        return torch.cat(rows)

    @torch.no_grad()
    def retention_reference(self, log: Callable[[str], None]) -> forgetting.Reference:
        """The untouched base's answers on the retention set, computed once (cached)."""
        # Every model input of every sample (token ids, pixels, grids) as a digest.
        samples = (
            {k: hashlib.sha256(v.cpu().contiguous().numpy().tobytes()).hexdigest() for k, v in e.full.items()}
            for e in self.retain_enc
        )
        key = forgetting.fingerprint(self.base.source, self.cfg.model, samples)

        def compute() -> forgetting.Reference:
            model = self.base.model
            was_training = model.training
            model.eval()
            try:
                with self._autocast():  # as every evaluation it is compared with runs
                    return forgetting.reference_of(self._retain_log_probs(model))
            finally:
                model.train(was_training)

        return forgetting.cached_reference(key, compute, log)

    @torch.no_grad()
    def sharded_reference(self) -> forgetting.Reference:
        """The retention reference of a sharded trial: computed after sharding, on every
        rank at once (the base is on the CPU until then, and a sharded forward needs every
        rank), with the adapter turned off, so it is the base's own answers. Not cached:
        the ranks would first have to agree that each of their nodes has the file."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with model.disable_adapter(), self._autocast():
                return forgetting.reference_of(self._retain_log_probs(model))
        finally:
            model.train(was_training)

    def _retain_kl(self, model: Any) -> torch.Tensor:
        assert self.reference is not None
        return forgetting.kl_to_reference(self._retain_log_probs(model), self.reference)

    def _val_loss(self, model: Any) -> dict[str, float]:
        sums = torch.zeros(len(self.tasks))
        counts = torch.zeros(len(self.tasks))
        bs = self.budget.eval_batch_size
        for start in range(0, len(self.val_enc), bs):
            idx = list(range(start, min(start + bs, len(self.val_enc))))
            batch = collate([self.val_enc[i].full for i in idx], pad_id=self.pad_id, left=False)
            batch = self._to_device(batch)
            labels = batch.pop("labels")
            task_ids = torch.tensor(
                [self.task_index[self.data.val[i].task] for i in idx], device=self.base.device
            )
            logits = model(**batch, use_cache=False).logits
            means, n = task_losses(logits, labels, task_ids, len(self.tasks))
            sums += (means * n).cpu()
            counts += n.cpu()
        return {t: float(sums[i] / counts[i].clamp(min=1)) for i, t in enumerate(self.tasks)}


def _eval_steps(budget: BudgetConfig) -> set[int]:
    steps = {budget.steps} | {s for s in budget.eval_at if 1 <= s < budget.steps}
    if budget.eval_every:
        steps |= set(range(budget.eval_every, budget.steps + 1, budget.eval_every))
    return steps


def _finite(metrics: dict[str, float]) -> None:
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise FloatingPointError(f"non-finite metrics {bad}")


def run_trial(
    params: TrialParams,
    budget: BudgetConfig,
    report: Report | None = None,
    *,
    cfg: TrainConfig,
    data: TrialData,
    base: Base | None = None,
    output_dir: Path | None = None,
    eval_base: bool = False,
    log: Callable[[str], None] | None = None,
    on_log_row: Callable[[dict[str, Any]], None] | None = None,
    ranks: Ranks | None = None,
    on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune once with ``params`` for ``budget.steps`` steps; return the final metrics.

    ``base`` lets a caller keep the base model loaded between trials: a fresh adapter is
    attached here and removed before returning, so no trained weight reaches the next
    trial. With ``output_dir`` the adapter, ``metrics.json`` and ``train_log.jsonl`` are
    written there; ``on_log_row`` sees each training-log row (step, losses, learning
    rates, gradient norms) as it is made.

    ``ranks`` is this process among a trial's train workers (Ray Train started the
    process group): every rank trains on its share of each batch; the main rank alone
    evaluates, reports metrics (the others report an empty dict at the same steps), and
    writes ``output_dir`` (give it on the main rank only).

    With ``budget.checkpoint_steps: K``, ``on_checkpoint(step, state)`` gets the trial's
    state every K steps (``vlsweep.trials.checkpoints``); a trial given such a state as
    ``resume`` continues after its step and ends as the uninterrupted trial would.

    Reads as its steps: the base and the trainer (``_setup``), the base's own metrics when
    asked, the training loop with its evaluations (``_train``), the result and the files
    (``_save``); an out-of-memory error becomes ``TrialOutOfMemory``.
    """
    say = log or (lambda _msg: None)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    owns_base = base is None
    cpu0 = time.process_time()
    ranks = ranks or Ranks()
    trainer, load_seconds = _setup(params, budget, cfg, data, base, say, ranks)
    base = trainer.base
    result: dict[str, Any] = {"base": _evaluate_base(trainer, say)} if eval_base and ranks.main else {}
    mixer = make_mixer(data.train, params, budget.steps, cfg.seed)
    cuda = trainer.compute_device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(trainer.compute_device)
    progress = _Progress()
    oom = ""
    try:
        # Inside the try: an adapter half attached (an error while its parameters are
        # cast) is taken off the kept base all the same.
        trainer.attach()
        if ranks.sharded and trainer.retain_enc:
            trainer.reference = trainer.sharded_reference()
        trainer.model.train()
        done = 0
        if resume is not None:
            done = checkpoints.restore(trainer, progress, resume)
            checkpoints.replay(mixer, done, budget.batch_size)
            say(f"resumed after step {done} from its checkpoint")
        save = None
        if on_checkpoint is not None and budget.checkpoint_steps:

            def save(step: int) -> None:
                on_checkpoint(step, checkpoints.capture(trainer, progress, step))

        _train(trainer, mixer, params, budget, progress, report, say, on_log_row, start=done + 1, save=save)
        result.update(progress.metrics)
        result.update(
            {
                "train_seconds": progress.train_seconds,
                "eval_seconds": progress.eval_seconds,
                "load_seconds": load_seconds,
                "encode_seconds": trainer.encode_seconds,
                "cpu_seconds": time.process_time() - cpu0,
                "samples_per_second": budget.steps * budget.batch_size / max(progress.train_seconds, 1e-9),
                "task_probabilities": mixer.probabilities,
                "params": params.to_dict(),
            }
        )
        if cuda:
            result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(trainer.compute_device) / 2**30
        state = trainer.full_adapter_state()  # a collective on a sharded trial: every rank
        if output_dir is not None and ranks.main:
            _save(output_dir, trainer, progress.log_rows, result, state)
    except torch.OutOfMemoryError as exc:
        oom = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    finally:
        # A sharded model is not taken apart: its ranks' processes end with the trial.
        if not owns_base and trainer.model is not None and not ranks.sharded:
            trainer.detach()
    if oom:
        # Raised here, not in the handler: torch's error (and the frames holding the step's
        # tensors) is gone by now, so the caller can free the memory for the next trial.
        batch = budget.eval_batch_size if progress.phase == "evaluation" else budget.batch_size
        del trainer, mixer  # the trial's optimizer state and gradients go with them
        raise TrialOutOfMemory(
            step=progress.step,
            phase=progress.phase,
            batch=batch,
            detail=oom,
            quantized=cfg.model.quantization is not None and cfg.model.quantization.bits == 4,
        )
    return result


@dataclass
class _Progress:
    """Where a trial's training stands: what an out-of-memory error reports (the phase and
    the step), the timings, the last evaluation and the training-log rows."""

    phase: str = "setup"  # then "training" or "evaluation"
    step: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    log_rows: list[dict[str, Any]] = field(default_factory=list)


def _setup(
    params: TrialParams,
    budget: BudgetConfig,
    cfg: TrainConfig,
    data: TrialData,
    base: Base | None,
    say: Callable[[str], None],
    ranks: Ranks,
) -> tuple[Trainer, float]:
    """The base (loaded here unless the caller keeps one) and the trainer on it, with the
    retention reference when forgetting is measured (on the main rank, which evaluates).
    Returns the seconds the load took."""
    t_load = time.perf_counter()
    base = base or load_base(cfg.model)
    load_seconds = time.perf_counter() - t_load
    trainer = Trainer(params, budget, cfg=cfg, data=data, base=base, ranks=ranks)
    say(f"encoded {len(data.train)} train / {len(data.val)} val samples in {trainer.encode_seconds:.1f}s")
    # (A sharded trial computes it after sharding, on every rank: Trainer.sharded_reference.)
    if trainer.retain_enc and ranks.main and not ranks.sharded:
        trainer.reference = trainer.retention_reference(say)
    return trainer, load_seconds


def _evaluate_base(trainer: Trainer, say: Callable[[str], None]) -> dict[str, float]:
    """The base model's own metrics, before any fine-tuning."""
    t0 = time.perf_counter()
    metrics = trainer.evaluate(trainer.base.model)
    say(
        f"base model: cer={metrics.get('cer', float('nan')):.4f} "
        f"iou={metrics.get('iou', float('nan')):.4f} ({time.perf_counter() - t0:.1f}s)"
    )
    return metrics


def _train(
    trainer: Trainer,
    mixer: TaskMixer,
    params: TrialParams,
    budget: BudgetConfig,
    progress: _Progress,
    report: Report | None,
    say: Callable[[str], None],
    on_log_row: Callable[[dict[str, Any]], None] | None,
    *,
    start: int = 1,
    save: Callable[[int], None] | None = None,
) -> None:
    """The training loop from step ``start``: a step on each batch the mixer draws (on
    several ranks, each rank's share of it), a training-log row every 10 steps (and at the
    first and each evaluation), an evaluation at each of the budget's steps, reported as
    it is made (on the main rank; the others report an empty dict at the same steps), and
    ``save(step)`` every ``budget.checkpoint_steps`` steps before the last."""
    eval_at = _eval_steps(budget)
    every = budget.checkpoint_steps
    ranks = trainer.ranks
    t_train = time.perf_counter()
    for step in range(start, budget.steps + 1):
        progress.phase, progress.step = "training", step
        batch = ranks.share(mixer.batch(budget.batch_size, step))
        out = trainer.step(trainer.train_batch(batch), step)
        if step % 10 == 0 or step in eval_at or step == 1:
            row = _log_row(trainer, params, out, step)
            progress.log_rows.append(row)
            if on_log_row is not None:
                on_log_row(row)
        if step in eval_at and not ranks.main:
            if ranks.sharded:  # every rank computes every forward pass of a sharded model
                progress.phase = "evaluation"
                trainer.evaluate()
            if report is not None:
                report(step, {})
            continue
        if step in eval_at:
            progress.train_seconds += time.perf_counter() - t_train
            t0 = time.perf_counter()
            progress.phase = "evaluation"
            metrics = trainer.evaluate()
            progress.eval_seconds += time.perf_counter() - t0
            _finite(metrics)
            metrics["steps"] = step
            progress.metrics = metrics
            shown = " ".join(
                f"{k}={v:.4f}" for k, v in metrics.items() if k in ("cer", "iou", "parse_fail_rate")
            )
            say(f"step {step}: {shown}")
            if report is not None:
                report(step, dict(metrics))
            t_train = time.perf_counter()
        if save is not None and every and step % every == 0 and step < budget.steps:
            progress.train_seconds += time.perf_counter() - t_train
            save(step)
            t_train = time.perf_counter()


def _log_row(trainer: Trainer, params: TrialParams, out: dict[str, Any], step: int) -> dict[str, Any]:
    """One training-log row: the loss and each task's, the balance's weights (and its own
    objective when it is not static), each group's gradient norm and learning rate."""
    loss = float(out["loss"])
    if not math.isfinite(loss):
        raise FloatingPointError(f"training loss is {loss} at step {step}")
    return {
        "step": step,
        "loss": loss,
        **{f"loss_{t}": float(out["per_task"][i]) for i, t in enumerate(trainer.tasks)},
        **{f"weight_{t}": float(out["weights"][i]) for i, t in enumerate(trainer.tasks)},
        **({"loss_objective": float(out["objective"])} if params.loss_balance != "static" else {}),
        **{f"grad_norm_{g}": float(v) for g, v in out["grad_norm"].items()},
        **{f"lr_{g['name']}": g["lr"] for g in trainer.groups},
    }


def _save(
    output_dir: Path,
    trainer: Trainer,
    log_rows: list[dict[str, Any]],
    result: dict[str, Any],
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """The trial's files: the adapter (from ``state``, the gathered trained parameters of
    a sharded trial), the training log, the metrics and the predictions."""
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(output_dir / "adapter", **({"state_dict": state} if state else {}))
    (output_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log_rows))
    (output_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (output_dir / "predictions.jsonl").write_text(trainer.predictions_jsonl())


def score(
    cfg: TrainConfig,
    val: list[Record],
    *,
    adapter: Path | None = None,
    base: Base | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, float], str]:
    """Score a model as a trial's evaluation does: greedy answers to ``val`` (prompts,
    box format, ``budget.max_new_tokens`` and ``eval_batch_size`` of ``cfg``) and the
    teacher-forced per-task loss. ``adapter`` is a peft adapter directory put on the base
    model first (a trial's, or one trained elsewhere). Returns the metrics and the
    answers as ``predictions.jsonl`` text."""
    say = log or (lambda _msg: None)
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise UserInputError(
            f"--adapter: {adapter} has no adapter_config.json; give the directory a peft "
            "adapter was saved to (save_pretrained)"
        )
    base = base or load_base(cfg.model)
    model = base.model
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        say(f"adapter {adapter} on {base.source}")
    trainer = Trainer(TrialParams(), cfg.budget, cfg=cfg, data=TrialData(train=[], val=val), base=base)
    t0 = time.perf_counter()
    metrics = trainer.evaluate(model)
    say(f"scored {len(val)} samples in {time.perf_counter() - t0:.1f}s")
    return metrics, trainer.predictions_jsonl()
