"""One explicit training loop (read it top to bottom): model + data -> LoRA adapter in loras/<name>/."""

from __future__ import annotations

import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from loratune.config import RunConfig, from_dict, merge_options, save_yaml, to_dict
from loratune.data import Sample, build_samples
from loratune.data.batching import micro_batches
from loratune.data.build import IGNORE, find_data
from loratune.errors import LoratuneError
from loratune.models import load_base, resolve_model_path, resolve_targets
from loratune.train.checkpoint import latest_checkpoint, load_state, save_adapter, save_checkpoint
from loratune.train.loss import token_loss_sum
from loratune.train.packing import use_packed_attention
from loratune.train.progress import Progress
from loratune.workspace import Workspace


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    seconds: float
    model: object  # the trained PeftModel, still in memory
    tokenizer: object


def train(
    config: RunConfig | None = None,
    home: str | Path | None = None,
    show_progress: bool = True,
    on_step=None,
    **options,
) -> TrainResult:
    """Train a LoRA adapter; everything lands in <home>/loras/<name>/.

    Args:
        config: the run's options (defaults where omitted).
        options: options layered over `config`, as on the command line: `model=`, `data=`, `name=`, dotted
            names in a dict (`**{"train.lr": 2e-4}`) or groups (`train={"epochs": 2}`).
        on_step: called with each metrics row (step, epoch, loss, lr, tokens_per_s, ...).
    """
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model

    # A copy (the caller's config is never changed), with the options layered on top.
    config = from_dict(RunConfig, merge_options(to_dict(config or RunConfig()), options)).validate()
    ws = Workspace.resolve(home)
    # Saved absolute in loratune.yaml, so a resume from another folder finds the same data (and fails fast if none).
    config.data.path = str(find_data(config.data.path, ws).resolve())
    config.name = config.name or Path(config.data.path).stem  # the adapter is named after its data by default
    run_dir = ws.lora_dir(config.name)
    tc = config.train
    resume_from = check_run_dir(run_dir, tc.resume, tc.overwrite)

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(tc.seed)
    model_path = resolve_model_path(config.model.source, ws, config.model.trust_remote_code)
    model, tokenizer = load_base(model_path, accelerator.device, config.model.trust_remote_code)
    samples, report = build_samples(config.data, tokenizer, ws)
    say = print if accelerator.is_main_process and show_progress else (lambda *a, **k: None)
    say(report.summary())

    lora = LoraConfig(
        r=config.adapter.rank,
        lora_alpha=config.adapter.alpha,
        lora_dropout=config.adapter.dropout,
        target_modules=resolve_targets(model, config.adapter.targets),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if tc.packing:
        use_packed_attention(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay)

    steps_per_epoch = math.ceil(len(samples) / tc.batch_size)
    total_steps = tc.max_steps or math.ceil(tc.epochs * steps_per_epoch)
    warmup = int(total_steps * tc.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total_steps, tc.scheduler))

    step = 0
    if resume_from is not None:
        step = load_state(resume_from, model, optimizer, scheduler)
        trim_metrics(run_dir / "metrics.jsonl", step)
        say(f"resuming from {resume_from.name} (step {step} of {total_steps})")
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.is_main_process:  # model, data and options are good: only now is anything written
        if tc.overwrite and resume_from is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(config, run_dir / "loratune.yaml")
    say(
        f"{sum(p.numel() for p in trainable):,} trainable parameters; {total_steps} steps of {tc.batch_size} samples "
        f"({tc.micro_batch} per micro-batch) on {accelerator.device}"
    )

    progress = Progress(
        run_dir / "metrics.jsonl" if accelerator.is_main_process else None,
        total_steps,
        step,
        tc.log_every,
        show_progress and accelerator.is_main_process,
    )
    pad_id = tokenizer.pad_token_id
    started, loss_value = time.perf_counter(), float("nan")
    model.train()
    while step < total_steps:
        t0 = time.perf_counter()
        batch = step_samples(samples, step, steps_per_epoch, tc.batch_size, tc.seed)
        # Packed: rows of up to micro_batch * cutoff tokens (the most a padded micro-batch could hold) unless set.
        passes = micro_batches(
            batch, tc.micro_batch, pad_id, tc.packing * (tc.packed_tokens or tc.micro_batch * config.data.cutoff)
        )
        n_trained = sum(sum(1 for x in s.labels[1:] if x != IGNORE) for s in batch)
        loss_total = 0.0
        for i, tensors in enumerate(passes):
            tensors = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in tensors.items()}
            # Normalise by the trained tokens of the whole step, so accumulation equals one big batch.
            with accelerator.no_sync(model) if i < len(passes) - 1 else nullcontext():
                loss_sum, _ = token_loss_sum(model, tensors)
                accelerator.backward(loss_sum / max(n_trained, 1))
            loss_total += loss_sum.item()
        loss_value = loss_total / max(n_trained, 1)
        if not math.isfinite(loss_value):  # before the optimizer step, so the weights stay finite
            raise LoratuneError(f"loss became {loss_value} at step {step + 1}; lower train.lr and resume or restart")
        if tc.max_grad_norm > 0:
            accelerator.clip_grad_norm_(trainable, tc.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        tokens = sum(len(s.input_ids) for s in batch)
        row = progress.step(step, step / steps_per_epoch, loss_value, lr, tokens, time.perf_counter() - t0)
        if on_step is not None:
            on_step(row)
        if accelerator.is_main_process and tc.save_every and step % tc.save_every == 0 and step < total_steps:
            save_checkpoint(run_dir, step, accelerator.unwrap_model(model), optimizer, scheduler)
    progress.close()

    if accelerator.is_main_process:
        save_adapter(run_dir, accelerator.unwrap_model(model))
        say(f"adapter saved in {run_dir} (final loss {loss_value:.4f})")
    accelerator.wait_for_everyone()
    model.eval()
    return TrainResult(
        run_dir, step, loss_value, time.perf_counter() - started, accelerator.unwrap_model(model), tokenizer
    )


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Refuse to clobber an existing run unless asked (nothing is deleted here); return the checkpoint to resume."""
    if resume:
        checkpoint = latest_checkpoint(run_dir) if run_dir.is_dir() else None
        if checkpoint is None:
            raise LoratuneError(f"nothing to resume: {run_dir} has no complete checkpoint")
        return checkpoint
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise LoratuneError(
                f"{run_dir} already exists; choose another name, continue it with --resume, or pass --overwrite"
            )
    return None


def step_samples(samples: list[Sample], step: int, steps_per_epoch: int, batch_size: int, seed: int) -> list[Sample]:
    """The samples of optimizer step `step`: a fixed shuffle per epoch, so any step can be found again on resume."""
    epoch, index = divmod(step, steps_per_epoch)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return [samples[i] for i in order[index * batch_size : (index + 1) * batch_size]]


def lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "constant":
        return 1.0
    return max(0.0, 1 - progress)


def trim_metrics(path: Path, step: int) -> None:
    """Drop metric rows past the resumed step, so the history reads as one uninterrupted run."""
    import json

    if path.is_file():
        rows = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] <= step
        ]
        path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
