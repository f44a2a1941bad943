"""Where the time of one training step goes: a torch.profiler run of loratune's own optimizer step, by kind of work.

`make bench BENCH_ARGS=--profile` (or `.venv/bin/python bench/throughput.py --profile [--suites NAME]`). The step is
the real one (`training.loop.train_step` on a Run built by `training.setup`), on a suite of bench/throughput.py, after
two warm-up steps (the first two steps still fault in fresh pages: 346,000 and 59,000 minor faults on
the reviews suite, 2026-12-04, then none). Every profiled operator's self time goes to one share:

- frozen matmuls: mm / addmm / bmm / linear whose shapes hold neither the LoRA rank nor the vocabulary;
- LoRA matmuls: those with the rank among their dimensions (A and B, forward and backward);
- head + CE: matmuls with the vocabulary among their dimensions, and the (log-)softmax / cross-entropy ops;
- attention: scaled_dot_product_attention and its kernels, forward and backward;
- optimizer: everything inside Optimizer.step (AdamW) and the gradient clipping;
- element-wise and other: the rest (norms, activations, residual adds, dropout, copies, autograd bookkeeping);
- data collation: the Python time of packing the step's samples into tensors (micro_batches run again, timed).
"""

from __future__ import annotations

import time
from collections import defaultdict

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")
HEAD_OPS = ("log_softmax", "cross_entropy", "nll_loss", "softmax_backward", "logsumexp")
ORDER = ("frozen matmuls", "LoRA matmuls", "head + CE", "attention", "optimizer", "element-wise and other")


def kind_of(event, rank: int, vocab: int, inside_optimizer: bool) -> str:
    name = event.name
    if inside_optimizer or "clip_grad" in name or "_foreach" in name:
        return "optimizer"
    if "scaled_dot_product" in name or "flash_attention" in name or "efficient_attention" in name:
        return "attention"
    if any(op in name for op in HEAD_OPS):
        return "head + CE"
    if name in MATMULS:
        dims = {d for shape in (event.input_shapes or []) for d in (shape or [])}
        if vocab in dims:
            return "head + CE"
        if rank in dims:
            return "LoRA matmuls"
        return "frozen matmuls"
    return "element-wise and other"


def ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def shares(events, rank: int, vocab: int) -> tuple[dict[str, float], dict[str, float]]:
    """Self CPU seconds per kind of work (each operator counted once, at its own level), and per operator of the
    element-wise rest."""
    out: dict[str, float] = defaultdict(float)
    rest: dict[str, float] = defaultdict(float)
    for event in events:
        if event.name.startswith(("ProfilerStep", "autograd::engine", "## ")):
            continue  # scopes: their time is their children's
        in_opt = any(a.name.startswith("Optimizer.step") or a.name == "## optimizer" for a in ancestors(event))
        attention = any("scaled_dot_product" in a.name for a in ancestors(event))
        kind = "attention" if attention else kind_of(event, rank, vocab, in_opt)
        out[kind] += event.self_cpu_time_total / 1e6
        if kind == ORDER[-1]:
            rest[event.name] += event.self_cpu_time_total / 1e6
    return out, rest


def profile(suite: dict, steps: int = 1, warmup: int = 2) -> list[str]:
    """Profile `steps` optimizer steps of loratune on `suite` (from bench/throughput.prepare_suite); report lines."""
    import torch
    from throughput import CACHE, loratune_options
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    import loratune.training.loop as loop
    from loratune.config import RunConfig
    from loratune.data.batching import micro_batches
    from loratune.training.guard import RunGuard
    from loratune.training.setup import plan_run, setup

    options = loratune_options(suite["model"], suite["data"], warmup + steps, "profile")
    with RunGuard() as guard:
        plan = plan_run(RunConfig(), CACHE / "profile-home", options, guard)
        run = setup(plan, guard, show_progress=False)
        tc = run.config.train
        rank, vocab = run.config.adapter.rank, run.model.get_output_embeddings().weight.shape[0]
        batches = [
            loop.step_samples(run.samples, k, run.steps_per_epoch, tc.batch_size, tc.seed)
            for k in range(warmup + steps)
        ]
        for batch in batches[:warmup]:  # warm-up: allocator, page faults, thread pools, lazy inits
            loop.train_step(run, batch)
        started = time.perf_counter()
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for batch in batches[warmup:]:
                with record_function("## step"):
                    loop.train_step(run, batch)
        wall = time.perf_counter() - started
        started = time.perf_counter()  # the same packing again, outside the profiler: its Python time
        for batch in batches[warmup:]:
            micro_batches(batch, tc.micro_batch, run.tokenizer.pad_token_id, tc.micro_batch * run.config.data.cutoff)
        collation = time.perf_counter() - started
    seconds, rest = shares(prof.events(), rank, vocab)
    seconds["data collation"] = collation
    total = sum(seconds.values())
    tokens = sum(len(s.input_ids) for b in batches[warmup:] for s in b)
    lines = [
        f"profile of {steps} packed step(s), {tokens} tokens, {wall:.2f} s wall under the profiler "
        f"({total:.2f} s of operator self time + collation), {torch.get_num_threads()} threads:",
        "| work | seconds | share |",
        "|---|---|---|",
    ]
    for kind in (*ORDER, "data collation"):
        lines.append(f"| {kind} | {seconds.get(kind, 0.0):.3f} | {100 * seconds.get(kind, 0.0) / total:.1f} % |")
    top = sorted(rest.items(), key=lambda kv: -kv[1])[:8]
    lines.append("element-wise and other, largest: " + ", ".join(f"{name} {t:.2f} s" for name, t in top))
    return lines
