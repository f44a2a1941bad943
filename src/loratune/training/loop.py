"""One explicit training loop (read it top to bottom): model + data -> LoRA adapter in loras/<name>/.

`train()` is three phases: `setup()` (setup.py) builds the `Run`, `train_loop()` takes the optimizer steps, and
`finish()` saves the adapter and marks the run finished.
"""

from __future__ import annotations

import math
import time
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loratune.adapters.card import write_card
from loratune.config import RunConfig
from loratune.data import Sample
from loratune.data.batching import micro_batches
from loratune.data.build import IGNORE
from loratune.errors import LoratuneError
from loratune.rundir import LOSS_PLOT, METRICS, read_losses, read_retention
from loratune.training.allocator import each_pass
from loratune.training.board import Board
from loratune.training.checkpoint import checkpoint_dir, save_adapter
from loratune.training.evaluate import Evaluator
from loratune.training.guard import RunGuard
from loratune.training.kto import kto_step
from loratune.training.loss import token_loss_sum
from loratune.training.pause import pause_point
from loratune.training.plot import plot_loss
from loratune.training.preference import Options, preference_step
from loratune.training.progress import Progress, retention_text
from loratune.training.resume import mark_finished, resume_command
from loratune.training.retention import replay_loss
from loratune.training.setup import Plan, Run, plan_run, setup
from loratune.training.sharding import adapter_weights
from loratune.training.stop import LOSS_TARGET, StopRequest, StopSource, stop_reason


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    seconds: float
    model: object = field(repr=False)  # the trained PeftModel, still in memory (its repr is ~200 lines)
    tokenizer: object = field(repr=False)
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
    # Ctrl-C / SIGTERM / the caller's stop end the run after a step; the guard keeps one writer per run folder and
    # saves a checkpoint if the run crashes.
    with StopRequest(stop) as stopping, RunGuard() as guard:
        plan = plan_run(config, home, options, guard)  # the options, the run folder, where to start; nothing loaded
        if plan.finished is not None:
            return finished_result(plan, show_progress)
        run = setup(plan, guard, show_progress)
        guard.protect(run)
        started = time.perf_counter()
        ended_by = train_loop(run, stopping, on_step)
        return finish(run, ended_by, started)


def train_loop(run: Run, stopping: StopRequest, on_step) -> str | None:
    """The optimizer steps from `run.step` to `run.total_steps`; returns why the run ended early (None: it did not)."""
    tc, main = run.config.train, run.accelerator.is_main_process
    left = run.total_steps - run.step
    run.say(f"training: {left} steps, {run.step + 1} to {run.total_steps}" if left else "training: no step left")
    own = run.run_dir if main else None  # only the main process writes the run's files
    board = Board(own / "tensorboard" if own and tc.report_to == "tensorboard" else None)
    pad_id = run.tokenizer.pad_token_id
    pairs = Options.of(tc) if tc.method != "sft" else None
    evaluate = Evaluator(run.eval_samples, own, tc.eval_every, run.total_steps, tc.micro_batch, pad_id, run.retention,
                         pairs, run.reference.start)  # fmt: skip
    progress = Progress(own / METRICS if own else None, run.total_steps, run.step, tc.log_every, run.show)
    # The last logged loss stands until a step is trained (a resume that only finishes the run trains none).
    run.loss = read_losses(run.run_dir).get(run.step, float("nan"))
    ended_by = None
    run.model.train()
    with closing(board), closing(progress):  # closed on a failure too, so an error starts on a line of its own
        while run.step < run.total_steps:
            t0 = time.perf_counter()
            batch = step_samples(run.samples, run.step, run.steps_per_epoch, tc.batch_size, tc.seed)
            lr = run.scheduler.get_last_lr()[0]  # the rate this step trains with
            run.loss, figures = train_step(run, batch)
            run.step += 1

            tokens = sum(len(s.input_ids) for s in batch)
            epoch = run.step / run.steps_per_epoch
            row = progress.step(run.step, epoch, run.loss, lr, tokens, time.perf_counter() - t0, figures)
            board.log(row)
            if on_step is not None:
                on_step(row)
            if tc.save_every and run.step % tc.save_every == 0 and run.step < run.total_steps:
                run.save_checkpoint(run.step)  # every process: under FSDP each gives its shards
                if main:
                    plot_loss(run.run_dir / METRICS, checkpoint_dir(run.run_dir, run.step) / LOSS_PLOT)
            if evaluate.due(run.step):
                evaluation = evaluate(run.model, run.step, epoch)
                board.log(evaluation)
                progress.evaluation(evaluation, evaluate.last_was_best)
            ended_by = stop_reason(stopping, run.accelerator, run.loss, tc.stop_at_loss)
            if ended_by is not None:  # Ctrl-C, SIGTERM, the caller's stop, train.stop_at_loss
                break
    return ended_by


def train_step(run: Run, batch: list) -> tuple[float, dict]:
    """One optimizer step on `batch` (samples, or pairs for a preference method); returns its loss (per trained token,
    or per pair) and the method's own figures (a preference method's rewards and accuracy)."""
    if run.config.train.method == "sft":
        loss, figures = sft_backward(run, batch), {}
    else:
        step = kto_step if run.config.train.method == "kto" else preference_step
        loss, figures = step(run, batch, run.reference)
    pause_point("step")  # inert outside the fault-injection tests
    if not math.isfinite(loss):  # before the optimizer step, so the weights stay finite
        raise LoratuneError(
            f"loss became {loss} at step {run.step + 1}, so training stopped before that step changed the "
            "weights and nothing was saved or replaced; lower train.lr and start again with --overwrite"
        )
    if run.config.train.max_grad_norm > 0:
        run.accelerator.clip_grad_norm_(run.trainable, run.config.train.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss, figures


def sft_backward(run: Run, batch: list[Sample]) -> float:
    """The backward passes of one supervised step on `batch`, in micro-batches; returns its loss per trained token."""
    tc, accelerator, model = run.config.train, run.accelerator, run.model
    world = accelerator.num_processes  # under `accelerate launch`, each process trains on its share of every step
    pad_id = run.tokenizer.pad_token_id
    packed, rank = run.config.packed_tokens(), accelerator.process_index
    passes, weights = micro_batches(batch, tc.micro_batch, pad_id, packed, rank, world)
    n_trained = sum(sum(1 for x in s.labels[1:] if x != IGNORE) for s in batch)
    loss_total = 0.0
    if tc.retain:  # train.retain: the KL to the base on a replay of its own answers, before the synchronised passes
        replay = run.retention.replay_items(run.step, tc.micro_batch, tc.seed)
        with accelerator.no_sync(model):  # every process replays the same items: DDP's average leaves them as they are
            kl_sum, n_replayed = replay_loss(model, replay, pad_id)
            accelerator.backward(kl_sum * (tc.retain / max(n_replayed, 1)))
    for i, (tensors, weight) in enumerate(each_pass(zip(passes, weights, strict=True), accelerator.device)):
        tensors = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in tensors.items()}
        # Normalise by the trained tokens of the whole step, so accumulation equals one big batch; DDP averages
        # gradients over the processes, so scale by their number to get the sum over all of the step's tokens.
        with accelerator.no_sync(model) if i < len(passes) - 1 else nullcontext():
            loss_sum, _ = token_loss_sum(model, tensors)
            accelerator.backward(loss_sum * (weight * world / max(n_trained, 1)))
        loss_total += weight * loss_sum.item()
    if world > 1:
        loss_total = accelerator.reduce(torch.tensor(loss_total, device=accelerator.device), "sum").item()
    return loss_total / max(n_trained, 1)


def finish(run: Run, ended_by: str | None, started: float) -> TrainResult:
    """Save the final checkpoint and adapter, the model card and the loss plot; mark the run finished unless stopped."""
    reached_loss = ended_by == LOSS_TARGET
    stopped = ended_by is not None and not reached_loss and run.step < run.total_steps
    run.say(f"finish: saving the adapter of step {run.step}")
    if run.step:  # a complete checkpoint of the final step too: resumable, and never the only copy of the weights
        run.save_checkpoint(run.step)  # every process: under FSDP each gives its shards
    model = run.accelerator.unwrap_model(run.model)
    weights = adapter_weights(model)
    if run.accelerator.is_main_process:
        save_adapter(run.run_dir, model, weights, run.step)
        write_card(run.run_dir, run.config, run.step, run.loss)
        plot_loss(run.run_dir / METRICS, run.run_dir / LOSS_PLOT)
        stop_at_loss = run.config.train.stop_at_loss
        if not stopped:  # last: a resume of this run then says "already finished" instead of training again
            mark_finished(run.run_dir, run.step, run.steps_per_epoch, run.loss, stop_at_loss if reached_loss else 0.0)
        run.say(f"adapter saved in {run.run_dir} (final loss {run.loss:.4f})")
        if run.retention is not None:
            say_retention(run, time.perf_counter() - started)
        if stopped:
            hint = resume_command(run.ws.home, run.config.name)
            run.say(f"stopped at step {run.step} of {run.total_steps}; continue with: {hint}")
        if reached_loss:
            run.say(f"reached train.stop_at_loss {stop_at_loss} at step {run.step}")
    run.accelerator.wait_for_everyone()
    run.model.eval()
    return TrainResult(run.run_dir, run.step, run.loss, time.perf_counter() - started, model, run.tokenizer, stopped)


def say_retention(run: Run, seconds: float) -> None:
    """The last retention figures, and what the probe cost against the run's time in this call."""
    figures = read_retention(run.run_dir)
    last = figures[max(figures)] if figures else None
    probe = run.retention
    cpu = time.process_time() - probe.cpu_mark  # the CPU time of the training, measurements included
    share = f" ({probe.seconds / seconds:.1%} of the training's {seconds:.0f} s" if seconds > 0 else " ("
    share += f"; CPU {probe.cpu_seconds:.1f} s, {probe.cpu_seconds / cpu:.1%} of {cpu:.0f} s)" if cpu > 0 else ")"
    if last is not None:
        took = f"the probe took {probe.seconds:.1f} s{share}"
        run.say(f"retention at step {max(figures)}: {retention_text(last)}; {took}")


def finished_result(plan: Plan, show_progress: bool) -> TrainResult:
    """A resume of a finished run: say so, change nothing."""
    record = plan.finished
    if show_progress and plan.accelerator.is_main_process:
        print(
            f"{plan.config.name} already finished at step {record['step']}; nothing changed (to train on, resume with "
            "a larger --train.max_steps or --train.epochs, or a lower --train.stop_at_loss)"
        )
    loss = float(record.get("loss", float("nan")))
    return TrainResult(plan.run_dir, int(record["step"]), loss, 0.0, None, None, already_finished=True)


def step_samples(samples: list[Sample], step: int, steps_per_epoch: int, batch_size: int, seed: int) -> list[Sample]:
    """The samples of optimizer step `step`: a fixed shuffle per epoch, so any step can be found again on resume."""
    epoch, index = divmod(step, steps_per_epoch)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return [samples[i] for i in order[index * batch_size : (index + 1) * batch_size]]
