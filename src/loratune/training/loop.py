"""One explicit training loop (read it top to bottom): model + data -> LoRA adapter in loras/<name>/."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from loratune.adapters.card import write_card
from loratune.config import RunConfig, adapter_from_run, from_dict, merge_options, save_yaml, to_dict
from loratune.data import Sample, build_samples
from loratune.data.batching import micro_batches
from loratune.data.build import IGNORE, find_data
from loratune.errors import LoratuneError
from loratune.models import load_base, resolve_model_path, resolve_targets
from loratune.models.quant import prepare_for_training
from loratune.prompting import make_contract, save_contract
from loratune.rundir import read_losses
from loratune.training.board import Board
from loratune.training.checkpoint import (
    checkpoint_dir,
    clean_leftovers,
    clear_run_dir,
    data_position,
    incomplete_checkpoints,
    latest_checkpoint,
    load_state,
    save_adapter,
)
from loratune.training.evaluate import Evaluator, split_eval
from loratune.training.guard import RunGuard
from loratune.training.lock import LOCK_FILE
from loratune.training.loss import token_loss_sum
from loratune.training.optim import build_optimizer, build_scheduler
from loratune.training.packing import use_packed_attention
from loratune.training.pause import pause_point
from loratune.training.plot import plot_loss
from loratune.training.progress import Progress
from loratune.training.resume import FINISHED, already_finished, check_resume_options, mark_finished, resume_command
from loratune.training.stop import StopSource
from loratune.workspace import Workspace


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    seconds: float
    model: object  # the trained PeftModel, still in memory
    tokenizer: object
    stopped: bool = False  # ended early by a signal or the caller's stop; resumable from its last checkpoint
    already_finished: bool = False  # a resume of a finished run: nothing trained or changed (model is None then)


def train(
    config: RunConfig | None = None,
    home: str | Path | None = None,
    show_progress: bool = True,
    on_step=None,
    stop: StopSource = None,
    **options,
) -> TrainResult:
    """Train a LoRA adapter; everything lands in <home>/loras/<name>/.

    Args:
        config: the run's options (defaults where omitted).
        options: options layered over `config`, as on the command line: `model=`, `data=`, `name=`, dotted
            names in a dict (`**{"train.lr": 2e-4}`) or groups (`train={"epochs": 2}`).
        on_step: called with each metrics row (step, epoch, loss, lr, tokens_per_s, ...).
        stop: a `threading.Event` or a function returning True: the run then ends like on Ctrl-C (after the
            current step, with a complete checkpoint). SIGINT and SIGTERM do the same when called in the main thread.
    """
    with RunGuard(stop) as guard:  # graceful stop, one writer per run folder, a checkpoint if the run crashes
        return _train(config, home, show_progress, on_step, guard, **options)


def _train(config, home, show_progress, on_step, guard: RunGuard, **options) -> TrainResult:
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model

    # A copy (the caller's config is never changed), with the options layered on top.
    config = from_dict(RunConfig, merge_options(to_dict(config or RunConfig()), options)).validate()
    ws = Workspace.resolve(home)
    tc = config.train
    if tc.resume is True:  # before looking for data: a resume by name alone gets its data from the saved run
        ws.check_resumable(config.name)
    # Saved absolute in loratune.yaml, so a resume from another folder finds the same data (and fails fast if none).
    config.data.path = str(find_data(config.data.path, ws).resolve())
    config.name = config.name or Path(config.data.path).stem  # the adapter is named after its data by default
    run_dir = ws.lora_dir(config.name)
    if config.adapter.copy_from:  # the adapter's shape comes from an earlier run (text-generation-webui's "copy from")
        config.adapter = adapter_from_run(ws.lora_dir(config.adapter.copy_from) / "loratune.yaml", config.adapter)

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    guard.claim(run_dir, accelerator.is_main_process, ws.home)  # a second run on the same name is refused here
    finished = already_finished(run_dir, config) if tc.resume else None
    resume_from, clear_first = check_run_dir(run_dir, tc.resume, tc.overwrite) if finished is None else (None, False)
    if resume_from is not None or finished is not None:  # continuing: the options must describe the same run
        check_resume_options(run_dir / "loratune.yaml", config)
    if finished is not None:
        return finished_result(run_dir, finished, config, accelerator.is_main_process and show_progress)
    with accelerator.main_process_first():  # one process converts or downloads the model; the others then reuse it
        model_path = resolve_model_path(config.model.source, ws, config.model.trust_remote_code)
    model, tokenizer = load_base(model_path, accelerator.device, config.model.trust_remote_code, config.model.quant)
    if config.model.quant != "none":  # QLoRA: frozen k-bit base, fp32 norms, gradient checkpointing on
        model = prepare_for_training(model)
    samples, report = build_samples(config.data, tokenizer, ws)
    contract = make_contract(config.data, tokenizer, ws)  # how prompts were built: generate/serve/merge reuse it
    samples, eval_samples = split_eval(config.data, samples, tokenizer, ws, tc.seed)
    say = print if accelerator.is_main_process and show_progress else (lambda *a, **k: None)
    say(report.summary() + (f"; {len(eval_samples)} samples for evaluation" if eval_samples else ""))
    if tc.gradient_checkpointing:
        enable_gradient_checkpointing(model)

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
    torch.manual_seed(tc.seed)
    model = get_peft_model(model, lora)
    if tc.packing:
        use_packed_attention(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, tc)

    steps_per_epoch = math.ceil(len(samples) / tc.batch_size)
    if len(samples) < tc.batch_size:
        say(f"note: {len(samples)} samples, fewer than train.batch_size {tc.batch_size}: every step uses them all")
    total_steps = tc.max_steps or math.ceil(tc.epochs * steps_per_epoch)
    scheduler = build_scheduler(optimizer, tc, total_steps)

    step = 0
    position = data_position(samples, steps_per_epoch, tc.seed)
    if resume_from is not None:
        resumed = int(resume_from.name.rsplit("-", 1)[1])
        if total_steps < resumed:  # equal: a kill after the last step's checkpoint; the run only needs finishing
            raise LoratuneError(
                f"train.max_steps / train.epochs now end the run at step {total_steps}, but {resume_from.name} is "
                f"already at step {resumed}: nothing is left to train; give more steps to resume"
            )
        step = load_state(resume_from, model, optimizer, scheduler, position)
        if accelerator.is_main_process:
            trim_metrics(run_dir / "metrics.jsonl", step)
        say(f"resuming from {resume_from.name} (step {step} of {total_steps})")
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.is_main_process:  # model, data and options are good: only now is anything written
        run_dir.mkdir(parents=True, exist_ok=True)
        guard.claim(run_dir)  # before anything is cleared: a run that started meanwhile on this name keeps its files
        if clear_first:
            clear_run_dir(run_dir)
        (run_dir / FINISHED).unlink(missing_ok=True)  # training on: the run is no longer finished
        clean_leftovers(run_dir)
        save_yaml(config, run_dir / "loratune.yaml")
        save_contract(run_dir, contract, tokenizer)  # prompt.json + tokenizer files; checkpoints copy them
    guard.watch(config, accelerator.unwrap_model(model), optimizer, scheduler, step, position)
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
    guard.closing(progress)
    pad_id = tokenizer.pad_token_id
    world = accelerator.num_processes  # under `accelerate launch`, each process trains on its share of every step
    main = accelerator.is_main_process
    board = Board(run_dir / "tensorboard" if main and tc.report_to == "tensorboard" else None)
    evaluate = Evaluator(eval_samples, run_dir if main else None, tc.eval_every, total_steps, tc.micro_batch, pad_id)
    # The last logged loss stands until a step is trained (a resume that only finishes the run trains none).
    started, loss_value = time.perf_counter(), read_losses(run_dir).get(step, float("nan"))
    model.train()
    while step < total_steps:
        t0 = time.perf_counter()
        batch = step_samples(samples, step, steps_per_epoch, tc.batch_size, tc.seed)
        # Packed: rows of up to micro_batch * cutoff tokens (the most a padded micro-batch could hold) unless set.
        packed_tokens = tc.packing * (tc.packed_tokens or tc.micro_batch * config.data.cutoff)
        passes, weights = micro_batches(batch, tc.micro_batch, pad_id, packed_tokens, accelerator.process_index, world)
        n_trained = sum(sum(1 for x in s.labels[1:] if x != IGNORE) for s in batch)
        loss_total = 0.0
        for i, (tensors, weight) in enumerate(zip(passes, weights, strict=True)):
            tensors = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in tensors.items()}
            # Normalise by the trained tokens of the whole step, so accumulation equals one big batch; DDP averages
            # gradients over the processes, so scale by their number to get the sum over all of the step's tokens.
            with accelerator.no_sync(model) if i < len(passes) - 1 else nullcontext():
                loss_sum, _ = token_loss_sum(model, tensors)
                accelerator.backward(loss_sum * (weight * world / max(n_trained, 1)))
            loss_total += weight * loss_sum.item()
        if world > 1:
            loss_total = accelerator.reduce(torch.tensor(loss_total, device=accelerator.device), "sum").item()
        loss_value = loss_total / max(n_trained, 1)
        pause_point("step")  # inert outside the fault-injection tests
        if not math.isfinite(loss_value):  # before the optimizer step, so the weights stay finite
            raise LoratuneError(
                f"loss became {loss_value} at step {step + 1}, so training stopped before that step changed the "
                "weights and nothing was saved or replaced; lower train.lr and start again with --overwrite"
            )
        if tc.max_grad_norm > 0:
            accelerator.clip_grad_norm_(trainable, tc.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        tokens = sum(len(s.input_ids) for s in batch)
        row = progress.step(step, step / steps_per_epoch, loss_value, lr, tokens, time.perf_counter() - t0)
        board.log(row)
        if on_step is not None:
            on_step(row)
        if accelerator.is_main_process and tc.save_every and step % tc.save_every == 0 and step < total_steps:
            guard.save(step)
            plot_loss(run_dir / "metrics.jsonl", checkpoint_dir(run_dir, step) / "loss.png")
        if evaluate.due(step):
            board.log(evaluate(model, step, step / steps_per_epoch))
        if guard.after_step(step, loss_value, accelerator):  # Ctrl-C, SIGTERM, the caller's stop, stop_at_loss
            break
    progress.close()
    board.close()

    stopped = guard.stopped and step < total_steps
    if accelerator.is_main_process:
        if step:  # a complete checkpoint of the final step too: resumable, and never the only copy of the weights
            guard.save(step)
        save_adapter(run_dir, accelerator.unwrap_model(model), step)
        write_card(run_dir, config, step, loss_value)
        plot_loss(run_dir / "metrics.jsonl", run_dir / "loss.png")
        if not stopped:  # last: a resume of this run then says "already finished" instead of training again
            mark_finished(run_dir, step, steps_per_epoch, loss_value, tc.stop_at_loss if guard.reached_loss else 0.0)
        say(f"adapter saved in {run_dir} (final loss {loss_value:.4f})")
        if stopped:
            say(f"stopped at step {step} of {total_steps}; continue with: {resume_command(ws.home, config.name)}")
        if guard.reached_loss:
            say(f"reached train.stop_at_loss {tc.stop_at_loss} at step {step}")
    accelerator.wait_for_everyone()
    model.eval()
    return TrainResult(
        run_dir, step, loss_value, time.perf_counter() - started, accelerator.unwrap_model(model), tokenizer, stopped
    )


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
    return run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir())


def holds_weights(run_dir: Path) -> bool:
    """Trained weights that a fresh start would delete: the run's adapter or a complete checkpoint."""
    return (run_dir / "adapter_model.safetensors").exists() or latest_checkpoint(run_dir) is not None


def finished_result(run_dir: Path, record: dict, config: RunConfig, show: bool) -> TrainResult:
    """A resume of a finished run: say so, change nothing."""
    if show:
        print(
            f"{config.name} already finished at step {record['step']}; nothing changed (to train on, resume with "
            "a larger --train.max_steps or --train.epochs, or a lower --train.stop_at_loss)"
        )
    loss = float(record.get("loss", float("nan")))
    return TrainResult(run_dir, int(record["step"]), loss, 0.0, None, None, already_finished=True)


def step_samples(samples: list[Sample], step: int, steps_per_epoch: int, batch_size: int, seed: int) -> list[Sample]:
    """The samples of optimizer step `step`: a fixed shuffle per epoch, so any step can be found again on resume."""
    epoch, index = divmod(step, steps_per_epoch)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return [samples[i] for i in order[index * batch_size : (index + 1) * batch_size]]


def enable_gradient_checkpointing(model) -> None:
    """Recompute each layer's activations in backward; non-reentrant, so frozen inputs need no grad hook."""
    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def trim_metrics(path: Path, step: int) -> None:
    """Drop metric rows past the resumed step, so the history reads as one uninterrupted run."""
    import json

    if path.is_file():
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    rows.append(line)
            except (ValueError, KeyError, TypeError):
                pass  # a line cut short by a kill
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
        tmp.replace(path)  # never a truncated history, even if killed right here
