"""Before the first step: the options and run folder (`plan_run`), then the model, data and optimizer (`setup`).

Nothing is written into the run folder until the model, the data and the options have all been checked: a run that
fails its setup leaves the folder as it was.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from loratune.config import RunConfig, adapter_from_run, from_dict, merge_options, save_yaml, to_dict
from loratune.data import Sample, build_samples
from loratune.data.build import resolved_path, run_name
from loratune.errors import LoratuneError
from loratune.models import load_base, resolve_model_path, resolve_targets
from loratune.models.fit import check_fits
from loratune.models.quant import prepare_for_training
from loratune.prompting import make_contract, save_contract
from loratune.rundir import CONFIG, FINISHED, LOCK, checkpoint_step, trim_metrics
from loratune.training.allocator import within_passes
from loratune.training.checkpoint import (
    checkpoint_dir,
    clean_leftovers,
    clear_run_dir,
    data_position,
    incomplete_checkpoints,
    is_complete,
    latest_checkpoint,
    load_state,
    save_checkpoint,
)
from loratune.training.evaluate import split_eval
from loratune.training.fused_mlp import fuse_swiglu
from loratune.training.guard import RunGuard
from loratune.training.kto import LabelledSamples
from loratune.training.lora_dropout import share_lora_dropout
from loratune.training.optim import build_optimizer, build_scheduler
from loratune.training.packing import use_packed_attention
from loratune.training.preference import NEEDS_REFERENCE, Pairs, Reference
from loratune.training.resume import already_finished, check_resume_options
from loratune.training.retention import Retention
from loratune.training.sharding import (
    adapter_weights,
    check_sharding,
    full_tensors,
    is_sharded,
    shard_optimizer_state,
    uses_fsdp2,
)
from loratune.training.start_adapter import START, keep_start, load_start, starting_adapter
from loratune.workspace import Workspace


@dataclass(frozen=True)
class Plan:
    """What this call does, decided before anything is loaded."""

    config: RunConfig  # the resolved options, as loratune.yaml will record them
    ws: Workspace
    run_dir: Path
    accelerator: object  # accelerate.Accelerator: the device, and this process's place under `accelerate launch`
    finished: dict | None  # the record of a finished run that these options would not train further
    resume_from: Path | None  # the checkpoint to continue from
    clear_first: bool  # empty the folder before writing: --overwrite, or a resume over a run with no weights
    start_from: Path | None = None  # adapter.init_from: the adapter weights the run starts from


@dataclass
class Run:
    """Everything the loop works with, built by `setup`; the loop moves `step` and `loss` on."""

    config: RunConfig
    ws: Workspace
    run_dir: Path
    accelerator: object
    show: bool  # print progress: this is the main process and the caller asked for it
    model: torch.nn.Module  # the PeftModel, prepared by accelerate (wrapped for DDP, or sharded for FSDP)
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    trainable: list[torch.nn.Parameter]  # the model's own after `prepare` (under FSDP: this process's shards)
    samples: list[Sample]
    eval_samples: list[Sample]
    steps_per_epoch: int
    total_steps: int
    position: dict  # what fixes the data each step sees, saved in checkpoints (see checkpoint.data_position)
    reference: Reference | None = None  # a preference method's reference log-probs (the base, or + the start adapter)
    retention: Retention | None = None  # the retention probe with the base's answers (None: train.retention off)
    step: int = 0  # optimizer steps finished
    loss: float = float("nan")  # of the last finished step

    def say(self, text: str) -> None:
        if self.show:
            print(text)

    @property
    def sharded(self) -> bool:
        return is_sharded(self.model)

    def save_checkpoint(self, step: int, write: bool | None = None) -> None:
        """A complete checkpoint of `step`, unless one exists already. Every process calls it (under FSDP each holds
        a shard of the adapter and of the optimizer's state, gathered here); `write` (default: the main process
        does) writes it."""
        model = self.accelerator.unwrap_model(self.model)
        weights, optimizer_state = adapter_weights(model), full_tensors(self.optimizer.state_dict())
        write = self.accelerator.is_main_process if write is None else write
        if write and not is_complete(checkpoint_dir(self.run_dir, step)):
            keep = self.config.train.keep_checkpoints
            save_checkpoint(self.run_dir, step, model, weights, optimizer_state, self.scheduler, keep, self.position)


def plan_run(config: RunConfig | None, home, options: dict, guard: RunGuard) -> Plan:
    """Resolve the options, find the data, lock the run folder and decide: a new run, a resume, or nothing to do."""
    from accelerate import Accelerator

    # A copy (the caller's config is never changed), with the options layered on top.
    config = from_dict(RunConfig, merge_options(to_dict(config or RunConfig()), options)).validate()
    ws = Workspace.resolve(home)
    tc = config.train
    if tc.resume is True:  # before looking for data: a resume by name alone gets its data from the saved run
        ws.check_resumable(config.name)
    # Saved absolute in loratune.yaml, so a resume from another folder finds the same data (and fails fast if none).
    config.data.path = resolved_path(config.data, ws)  # a hub dataset: its snapshot; a list: each one
    config.name = config.name or run_name(config.data.path)  # the adapter is named after its data by default
    run_dir = ws.lora_dir(config.name)
    if config.adapter.copy_from:  # the adapter's shape comes from an earlier run (text-generation-webui's "copy from")
        config.adapter = adapter_from_run(ws.lora_dir(config.adapter.copy_from), config.adapter)

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    note = check_sharding(accelerator)  # FSDP1 is refused; FSDP asked for on CPUs is DDP there
    if note and accelerator.is_main_process:
        print(note)
    guard.claim(run_dir, ws.home, accelerator.is_main_process)  # a second run on the same name is refused here
    finished = already_finished(run_dir, config) if tc.resume else None
    resume_from, clear_first = check_run_dir(run_dir, tc.resume, tc.overwrite) if finished is None else (None, False)
    resuming = resume_from is not None or finished is not None
    start_from = None
    if config.adapter.init_from:  # the shape and weights of the adapter the run starts from
        reference = tc.method in NEEDS_REFERENCE
        config.adapter, start_from = starting_adapter(config.adapter, ws, run_dir, resuming, reference)
    if resuming:  # continuing: the options must describe the same run
        check_resume_options(run_dir, config)
    return Plan(config, ws, run_dir, accelerator, finished, resume_from, clear_first, start_from)


def setup(plan: Plan, guard: RunGuard, show_progress: bool) -> Run:
    """Load the model and data, wrap the model in LoRA, build the optimizer, restore a checkpoint; then write the run
    folder's loratune.yaml and prompt files."""
    config, tc, accelerator = plan.config, plan.config.train, plan.accelerator
    sharded = uses_fsdp2(accelerator)  # `prepare` will shard the model over the processes (FSDP2)
    show = accelerator.is_main_process and show_progress
    say = print if show else (lambda *a, **k: None)
    say(f"setup: {config.name}: loading the model and the data")
    with accelerator.main_process_first():  # one process converts or downloads the model; the others then reuse it
        model_path = resolve_model_path(config.model.source, plan.ws, config.model.trust_remote_code)
    shards = accelerator.num_processes if sharded else 1
    check_fits(config, model_path, accelerator.device.type, shards)  # stopped here, not by the OOM killer
    if sharded and config.model.quant != "none":
        raise LoratuneError(
            f"model.quant {config.model.quant} places the whole base on each GPU, which FSDP is there to avoid: "
            "train the unquantized base under FSDP, or the quantized one with DDP (`accelerate launch --multi_gpu`)"
        )
    # Under FSDP the base stays in host memory until `prepare` moves each process's shard to its device.
    model, tokenizer = load_base(model_path, accelerator.device, config.model.trust_remote_code, config.model.quant,
                                 place=not sharded)  # fmt: skip
    if config.model.quant != "none":  # QLoRA: frozen k-bit base, fp32 norms, gradient checkpointing on
        model = prepare_for_training(model)
    samples, report = build_samples(config.data, tokenizer, plan.ws)
    check_method(tc.method, report)  # first: other records under a preference method are refused by name
    if tc.method != "sft":  # preference data: its samples are pairs (chosen, rejected), or labelled (kto)
        samples = LabelledSamples(samples) if tc.method == "kto" else Pairs(samples)
    contract = make_contract(config.data, tokenizer, plan.ws)  # how prompts were built: generate/serve/merge reuse it
    samples, eval_samples = split_eval(config.data, samples, tokenizer, plan.ws, tc.seed)
    retention = Retention.prepare(config, plan.ws, contract, tokenizer)  # a bad probe file fails here
    say(report.summary() + (f"; {len(eval_samples)} samples for evaluation" if eval_samples else ""))
    if config.checkpointing():
        enable_gradient_checkpointing(model)
    model = add_lora(model, config)
    within_passes(model, accelerator.device)  # glibc's freed pages handed back inside each forward pass too
    reference = starting_point(plan, model, sharded, say)  # adapter.init_from's weights; the reference
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], tc)

    steps_per_epoch = math.ceil(len(samples) / tc.batch_size)
    if len(samples) < tc.batch_size:
        say(f"note: {len(samples)} samples, fewer than train.batch_size {tc.batch_size}: every step uses them all")
    total_steps = tc.max_steps or math.ceil(tc.epochs * steps_per_epoch)
    scheduler = build_scheduler(optimizer, tc, total_steps)
    position = data_position(samples, steps_per_epoch, tc.seed)
    step, optimizer_state = 0, None
    if plan.resume_from is not None:  # the adapter before `prepare` shards it; the optimizer's state after
        step, optimizer_state = restore(plan, model, scheduler, position, total_steps, samples)
        say(f"resuming from {plan.resume_from.name} (step {step} of {total_steps})")
    model, optimizer = accelerator.prepare(model, optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]  # under FSDP, new parameters: the shards
    if sharded:
        from torch.distributed.fsdp import register_fsdp_forward_method

        register_fsdp_forward_method(model, "generate")  # the retention probe's answers gather the shards too
    if optimizer_state is not None:
        optimizer.load_state_dict(shard_optimizer_state(optimizer, optimizer_state) if sharded else optimizer_state)
    if accelerator.is_main_process:  # model, data and options are good: only now is anything written
        write_run_folder(plan, guard, contract, tokenizer)
        if reference.start is not None and plan.start_from != plan.run_dir / START:
            keep_start(plan.start_from, plan.run_dir)  # the reference's weights, for a resume
    if reference.needed and tc.precompute_reference:  # the reference's log-probs of every pair, once (not saved)
        whose = "the base model's" if reference.start is None else "the starting adapter's"
        say(f"reference: {whose} log-probs of {len(samples)} {'samples' if tc.method == 'kto' else 'pairs'}")
        pad_id = tokenizer.pad_token_id
        reference.precompute(model, samples, tc.micro_batch, pad_id, accelerator.device, config.packed_tokens())
    if retention is not None:  # the base model's answers to the probe, once per run (cached in the run folder)
        # Under FSDP every process takes part in each forward pass, so all answer together.
        with nullcontext() if sharded else accelerator.main_process_first():
            trained_tokens = token_count(samples) * total_steps // steps_per_epoch
            measures = (tc.eval_every and total_steps // tc.eval_every) + 1
            retention.fit(tc.retention_items, trained_tokens, measures)
            retention.answer_as_base(model, plan.run_dir, accelerator.is_main_process, say)
    say(
        f"{sum(p.numel() for p in trainable):,} trainable parameters; {total_steps} steps of {tc.batch_size} samples "
        f"({tc.micro_batch} per micro-batch) on {accelerator.device}"
        + (f", sharded over {accelerator.num_processes} processes (FSDP2)" if sharded else "")
    )
    return Run(
        config=config, ws=plan.ws, run_dir=plan.run_dir, accelerator=accelerator, show=show, model=model,
        tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler, trainable=trainable, samples=samples,
        eval_samples=eval_samples, steps_per_epoch=steps_per_epoch, total_steps=total_steps, position=position,
        retention=retention, reference=reference, step=step,
    )  # fmt: skip


def token_count(samples) -> int:
    """The tokens of the training samples: from the sample table of cached samples (a pass over every sample would
    read the whole memory-mapped corpus), else sample by sample (a preference method's items, a few thousand)."""
    if hasattr(samples, "column"):
        return int(samples.column("length").sum())
    return sum(len(s.input_ids) for s in samples)


def starting_point(plan: Plan, model, sharded: bool, say) -> Reference:
    """Put adapter.init_from's weights into the new adapter (a resume then loads its checkpoint over them); the
    run's reference: the base, or for a run with a starting adapter that adapter."""
    method = plan.config.train.method
    reference = Reference(method in NEEDS_REFERENCE)
    if plan.start_from is None:
        return reference
    start = load_start(model, plan.start_from)
    if reference.needed:
        if sharded:
            raise LoratuneError(
                f"adapter.init_from with train.method {method} under FSDP: a starting adapter as the reference is "
                "not supported on sharded weights yet; use DDP (`accelerate launch --multi_gpu`)"
            )
        reference.start = start
    also = " (also the reference)" if reference.start is not None else ""
    say(f"starting from the adapter in {plan.start_from.parent}{also}")
    return reference


def check_method(method: str, report) -> None:
    """Pair methods train on preference records only, kto on labelled records only, supervised fine-tuning on
    anything else: SFT on labelled records would teach the undesirable completions too."""
    counts = report.shapes
    if method == "sft" and "preference" in counts:
        raise LoratuneError(
            f"{report.path}: {counts['preference']} preference records (chosen / rejected): train them with "
            "--train.method dpo (or ipo, simpo, orpo), or give supervised records"
        )
    if method == "sft" and "kto" in counts:
        raise LoratuneError(
            f"{report.path}: {counts['kto']} labelled records (prompt / completion / label): train them with "
            "--train.method kto; supervised fine-tuning would learn the undesirable completions too (give the "
            "desirable ones without a label to fine-tune on them)"
        )
    needed = {"sft": None, "kto": "kto"}.get(method, "preference")
    if needed and set(counts) - {needed}:
        others = ", ".join(f"{shape} {n}" for shape, n in counts.items() if shape != needed)
        wants = "labelled records (prompt, completion, label true/false)" if needed == "kto" else (
            "preference records (prompt or instruction, chosen, rejected)")  # fmt: skip
        hint = {"kto": "; labelled records train with --train.method kto",
                "preference": "; pairs train with --train.method dpo (or ipo, simpo, orpo)"}  # fmt: skip
        also = next((hint[shape] for shape in counts if shape in hint and shape != needed), "")
        raise LoratuneError(f"{report.path}: train.method {method} needs {wants}; this data has {others}{also}")


def add_lora(model, config: RunConfig):
    """The base model wrapped in the LoRA adapter the options describe (a PeftModel)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.adapter.rank,
        lora_alpha=config.adapter.alpha,
        lora_dropout=config.adapter.dropout,
        target_modules=resolve_targets(model, config.adapter.targets),
        use_rslora=config.adapter.rslora,
        use_dora=config.adapter.dora,
        task_type="CAUSAL_LM",
    )
    # Seeded here, right before the LoRA weights are drawn: whatever ran before (a GGUF conversion, a download) can
    # never change them, so the same seed gives the same run the first time too.
    torch.manual_seed(config.train.seed)
    model = get_peft_model(model, lora)
    share_lora_dropout(model, config.adapter.dropout)
    fuse_swiglu(model)
    if config.train.packing:
        use_packed_attention(model)
    return model


def restore(plan: Plan, model, scheduler, position: dict, total_steps: int, samples) -> tuple[int, dict]:
    """Load the checkpoint to resume from into the model and scheduler; return its step and the optimizer's state."""
    resumed = checkpoint_step(plan.resume_from.name)
    if total_steps < resumed:  # equal: a kill after the last step's checkpoint; the run only needs finishing
        raise LoratuneError(
            f"train.max_steps / train.epochs now end the run at step {total_steps}, but {plan.resume_from.name} is "
            f"already at step {resumed}: nothing is left to train; give more steps to resume"
        )
    step, optimizer_state = load_state(plan.resume_from, model, scheduler, position, samples)
    if plan.accelerator.is_main_process:
        trim_metrics(plan.run_dir, step)
    return step, optimizer_state


def write_run_folder(plan: Plan, guard: RunGuard, contract, tokenizer) -> None:
    """Create (or clear, or tidy) the run folder and record the run's options and prompt files (main process)."""
    run_dir = plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    guard.claim(run_dir, plan.ws.home)  # before anything is cleared: a run that started meanwhile keeps its files
    if plan.clear_first:
        clear_run_dir(run_dir)
    (run_dir / FINISHED).unlink(missing_ok=True)  # training on: the run is no longer finished
    clean_leftovers(run_dir)
    save_yaml(plan.config, run_dir / CONFIG)
    save_contract(run_dir, contract, tokenizer)  # prompt.json + tokenizer files; checkpoints copy them


def check_run_dir(run_dir: Path, resume: bool | str, overwrite: bool) -> tuple[Path | None, bool]:
    """Refuse to clobber an existing run unless asked (nothing is deleted here).

    Returns (the checkpoint to resume from, whether to empty the folder before writing). `resume` True needs a
    complete checkpoint; 'auto' takes one if there is one, else starts like a new run, over the leftovers of a run
    killed before its first checkpoint too (no weights of it survive, so nothing is lost).
    """
    if resume:
        checkpoint = latest_checkpoint(run_dir) if run_dir.is_dir() else None
        skipped = incomplete_checkpoints(run_dir) if run_dir.is_dir() else []
        if skipped:
            print(f"ignoring incomplete checkpoint(s) (interrupted while saving): {', '.join(skipped)}")
        if checkpoint is not None:
            return checkpoint, False
        trained = holds_weights(run_dir)
        if resume != "auto":
            raise LoratuneError(
                f"nothing to resume: {run_dir} has no complete checkpoint; "
                + (
                    "its adapter is the only copy of its weights: train a new run (another --name), or replace it "
                    "with --overwrite"
                    if trained
                    else "it was stopped before its first one, so start it again with --train.resume auto"
                )
            )
        if not trained:
            return None, True
    if has_run(run_dir) and not overwrite:
        raise LoratuneError(
            f"{run_dir} already exists; choose another name, continue it with --resume, or pass --overwrite"
        )
    return None, overwrite


def has_run(run_dir: Path) -> bool:
    """Anything besides a lock file in the run folder."""
    return run_dir.is_dir() and any(p.name != LOCK for p in run_dir.iterdir())


def holds_weights(run_dir: Path) -> bool:
    """Trained weights that a fresh start would delete: the run's adapter or a complete checkpoint."""
    return (run_dir / "adapter_model.safetensors").exists() or latest_checkpoint(run_dir) is not None


def enable_gradient_checkpointing(model) -> None:
    """Recompute each layer's activations in backward; non-reentrant, so frozen inputs need no grad hook."""
    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
