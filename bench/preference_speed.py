"""Preference tuning speed: loratune DPO against loratune SFT on the same tokens, and against TRL's DPOTrainer + peft.

Issue #20's target: DPO tokens/s within 15 % of SFT's on the same tokens when the reference log-probs are precomputed
(train.precompute_reference, the default). Every arm trains the same LoRA as bench/throughput.py (rank 32 / alpha 64 /
dropout 0.05 on q_proj+v_proj, lr 3e-4 constant, AdamW, clipping 1.0, fp32 on the CPU, micro-batch 4 samples = 2
pairs, packing on) on the first --pairs preference pairs of examples/preference's data (the demo's pirate answer
chosen, the base model's own greedy answer rejected), --batch pairs per optimizer step, --steps steps (one epoch at
most):

  sft          loratune SFT on the pairs' sides as plain instruction records (instruction + input + output = chosen,
               and again with output = rejected), laid out in the file so that SFT's step k trains exactly the two
               sides of DPO's step k pairs (checked before any arm runs: the same token ids, step by step);
  dpo          loratune DPO, train.precompute_reference true (the default: the base's log-probs once, before step 1);
  dpo-noref    loratune DPO, train.precompute_reference false (a reference forward pass per pass, adapter disabled);
  trl, trl-precompute   TRL's DPOTrainer + peft (the same LoRA and optimizer, 2 pairs per micro-batch, the pairs in
               loratune's order, padded: TRL's default), precompute_ref_log_probs false / true; skipped, with a note,
               when trl is not importable. The prompt and both answers are given as text decoded from loratune's
               tokens (TRL tokenizes them itself), and the clock counts loratune's token count of the same pairs.

Retention (train.retention) is off in the loratune arms: its probe is generation before the first step, not training.

Each arm runs in its own process (peak RSS per process, resource.getrusage in the child), interleaved A B C A B C,
--repeats times (--quick: once). Printed per arm, median and [min - max] over the repeats: useful tokens/s (both
sides' tokens of every step after the first, over those steps' wall time), the same tokens per CPU second of the
arm's process over those steps (threads summed: less sensitive to neighbours than wall time on a shared machine, as
long as the arm's threads do not oversubscribe the cores), time to first step (process start to the
end of the first optimizer step: imports, model, data, the reference precompute, one step), whole-process wall time,
peak RSS and MFU (bench/throughput.py's useful FLOPs over its measured matmul peak). The load average is printed
before and after every arm: on a shared machine it says how far to trust the figures. The DPO arms' per-step losses
must agree (precomputed or not, the same reference): a correctness guard.

Run: `.venv/bin/python bench/preference_speed.py [--quick]` after `make preference` (the home holding loratune's
default model and the pairs: $LORATUNE_TEST_HOME, else $LORATUNE_HOME, else the current folder; the runs and the
arms' data go to $LORATUNE_BENCH_CACHE, default ~/.cache/loratune-bench). Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from throughput import (
    ALPHA,
    CACHE,
    DROPOUT,
    LR,
    RANK,
    SEED,
    TARGETS,
    StepClock,
    common_args,
    matmul_peak_gflops,
    sample_flops,
)

ARMS = ("sft", "dpo", "dpo-noref", "trl", "trl-precompute")
MICRO, CUTOFF = 4, 256
cpu_marks: list[float] = []  # the arm's process CPU time at the end of each optimizer step (threads summed)
PAIRS_FILE = "datasets/preference/train.jsonl"  # in the test home, written by examples/preference
HOME = Path(os.environ.get("LORATUNE_TEST_HOME") or os.environ.get("LORATUNE_HOME") or ".")


# ---------------------------------------------------------------- preparation (in the driver)


def loratune_options(data: Path, method: str, batch: int, steps: int, **train) -> dict:
    return {
        "model": str(model_path()),
        "data": str(data),
        "name": f"pref-{method}",
        "adapter": {"rank": RANK, "alpha": ALPHA, "dropout": DROPOUT, "targets": ",".join(TARGETS)},
        "data.cutoff": CUTOFF,
        "train": {
            "method": method,
            "max_steps": steps,
            "lr": LR,
            "scheduler": "constant",
            "warmup_ratio": 0.0,
            "batch_size": batch,
            "micro_batch": MICRO,
            "save_every": 0,
            "seed": SEED,
            "retention": False,
            "overwrite": True,
        }
        | train,
    }


def model_path() -> Path:
    from loratune.models import resolve_model_path
    from loratune.workspace import Workspace

    return resolve_model_path("default", Workspace.resolve(HOME))


def built(options: dict):
    from transformers import AutoTokenizer

    from loratune.config import RunConfig, from_dict, merge_options, to_dict
    from loratune.data import build_samples
    from loratune.workspace import Workspace

    config = from_dict(RunConfig, merge_options(to_dict(RunConfig()), options))
    tokenizer = AutoTokenizer.from_pretrained(model_path())
    samples, _ = build_samples(config.data, tokenizer, Workspace.resolve(CACHE / "pref-home"))
    return samples, tokenizer


def prepare(pairs: int, batch: int, steps: int) -> dict:
    """The pairs file, the SFT file laid out so that both train the same tokens step by step, and the step figures."""
    import torch

    from loratune.training.loop import step_samples
    from loratune.training.preference import Pairs

    folder = CACHE / f"preference-{pairs}-{batch}"
    folder.mkdir(parents=True, exist_ok=True)
    records = [json.loads(line) for line in (HOME / PAIRS_FILE).read_text(encoding="utf-8").splitlines()[:pairs]]
    pairs_file = folder / "pairs.jsonl"
    write_once(pairs_file, records)
    dpo_samples, tokenizer = built(loratune_options(pairs_file, "dpo", batch, steps))
    view = Pairs(dpo_samples)
    assert len(view) == pairs, f"{len(view)} of {pairs} pairs kept: a side is longer than the cutoff {CUTOFF}"
    per_epoch = -(-pairs // batch)
    assert steps <= per_epoch, f"{steps} steps: more than one epoch ({per_epoch}); the SFT layout holds for one"
    dpo_steps = [step_samples(view, k, per_epoch, batch, SEED) for k in range(steps)]

    # SFT step k takes samples[order[k*2b:(k+1)*2b]] (loop.step_samples): put the j-th side of DPO's order at order[j].
    sides = [
        {k: records[p.index][k] for k in ("instruction", "input", "system") if k in records[p.index]}
        | {"output": records[p.index][side]}
        for k in range(per_epoch)
        for p in step_samples(view, k, per_epoch, batch, SEED)
        for side in ("chosen", "rejected")
    ]
    order = torch.randperm(len(sides), generator=torch.Generator().manual_seed(SEED)).tolist()
    laid_out = [None] * len(sides)
    for j, position in enumerate(order):
        laid_out[position] = sides[j]
    sft_file = folder / "sides.jsonl"
    write_once(sft_file, laid_out)
    sft_samples, _ = built(loratune_options(sft_file, "sft", 2 * batch, steps))
    for k, step_pairs in enumerate(dpo_steps):  # the guard: the same token ids and labels, step by step
        sft_step = step_samples(sft_samples, k, per_epoch, 2 * batch, SEED)
        dpo_sides = [s for p in step_pairs for s in (p.chosen, p.rejected)]
        same = [(s.input_ids, s.labels) for s in sft_step] == [(s.input_ids, s.labels) for s in dpo_sides]
        assert same, f"step {k + 1}: the SFT samples are not the DPO pairs' sides"

    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_path())
    rows = [{"input_ids": s.input_ids, "labels": s.labels} for p in sum(dpo_steps, []) for s in (p.chosen, p.rejected)]
    return {
        "pairs_file": str(pairs_file),
        "sft_file": str(sft_file),
        "batch": batch,
        "steps": steps,
        "tokens_per_step": [sum(len(p.input_ids) for p in step) for step in dpo_steps],
        "trl_pairs": [trl_record(p, tokenizer) for step in dpo_steps for p in step],
        "flops_per_token": sum(sample_flops(cfg, r) for r in rows) / sum(len(r["input_ids"]) for r in rows),
    }


def write_once(path: Path, records: list[dict]) -> None:
    """Records as JSONL, left alone when the file holds them already (another bench process may be reading it)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def trl_record(pair, tokenizer) -> dict:
    """A pair as TRL's text form: the prompt loratune built, and each answer without its end-of-sequence token."""

    def answer(sample) -> str:
        ids = [t for t, label in zip(sample.input_ids, sample.labels, strict=True) if label != -100]
        ids = ids[: ids.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in ids else ids  # TRL adds its own
        return tokenizer.decode(ids)

    chosen = pair.chosen
    prompt = [t for t, label in zip(chosen.input_ids, chosen.labels, strict=True) if label == -100]
    return {"prompt": tokenizer.decode(prompt), "chosen": answer(chosen), "rejected": answer(pair.rejected)}


# ---------------------------------------------------------------- the arms (each in its own process)


def run_loratune(suite: dict, clock: StepClock, method: str, **train) -> list[float]:
    from loratune import train as loratune_train

    data = suite["sft_file"] if method == "sft" else suite["pairs_file"]
    batch = 2 * suite["batch"] if method == "sft" else suite["batch"]  # SFT: both sides of the step's pairs
    losses = []

    def on_step(row):
        clock.count(suite["tokens_per_step"][row["step"] - 1], 0)
        clock.step_done()
        cpu_marks.append(time.process_time())
        losses.append(row["loss"])

    options = loratune_options(Path(data), method, batch, suite["steps"], **train)
    loratune_train(home=CACHE / "pref-home", show_progress=False, on_step=on_step, **options)
    return losses


def run_trl(suite: dict, clock: StepClock, precompute: bool) -> list[float]:
    """TRL's DPOTrainer + peft on the same pairs in loratune's order (not run in the session that wrote it: no trl)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    losses = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.count(suite["tokens_per_step"][state.global_step - 1], 0)
            clock.step_done()
            cpu_marks.append(time.process_time())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    class Ordered(DPOTrainer):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)  # loratune's order, not a new shuffle

    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(model_path(), dtype=torch.float32)
    lora = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=TARGETS, task_type="CAUSAL_LM")
    per_pass = MICRO // 2
    args = DPOConfig(
        per_device_train_batch_size=per_pass,
        gradient_accumulation_steps=suite["batch"] // per_pass,
        max_steps=suite["steps"],
        beta=0.1,
        max_length=2 * CUTOFF,
        precompute_ref_log_probs=precompute,
        disable_dropout=False,  # TRL's default turns the LoRA dropout off; loratune's policy passes keep it
        **common_args() | {"output_dir": str(CACHE / "trl-dpo-out")},
    )
    trainer = Ordered(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(suite["trl_pairs"]),
        processing_class=AutoTokenizer.from_pretrained(model_path()),
        peft_config=lora,
        callbacks=[Clock()],
    )
    trainer.train()
    return losses


def arm_main(arm: str, suite: dict, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    clock = StepClock()
    arms = {
        "sft": lambda: run_loratune(suite, clock, "sft"),
        "dpo": lambda: run_loratune(suite, clock, "dpo", precompute_reference=True),
        "dpo-noref": lambda: run_loratune(suite, clock, "dpo", precompute_reference=False),
        "trl": lambda: run_trl(suite, clock, precompute=False),
        "trl-precompute": lambda: run_trl(suite, clock, precompute=True),
    }
    losses = arms[arm]()
    later_tokens = sum(suite["tokens_per_step"][1 : len(cpu_marks)])
    result = clock.result() | {
        "cpu_tok_s": later_tokens / (cpu_marks[-1] - cpu_marks[0]),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "losses": losses,
        "threads": torch.get_num_threads(),
    }
    result.pop("trained_tok_s")
    print("RESULT " + json.dumps(result), flush=True)


def profile_methods(suite: dict) -> list[str]:
    """Where one optimizer step's time goes, SFT beside DPO (precomputed reference) on the same tokens: the second
    step of each, after the first as a warm-up, split by bench/profile_step.py's kinds of work."""
    import torch
    from profile_step import ORDER, shares
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    from loratune.config import RunConfig
    from loratune.training.guard import RunGuard
    from loratune.training.loop import step_samples, train_step
    from loratune.training.setup import plan_run, setup

    table, walls = {}, {}
    for method in ("sft", "dpo"):
        data = suite["sft_file"] if method == "sft" else suite["pairs_file"]
        batch = 2 * suite["batch"] if method == "sft" else suite["batch"]
        with RunGuard() as guard:
            options = loratune_options(Path(data), method, batch, 2) | {"name": f"profile-{method}"}
            plan = plan_run(RunConfig(), CACHE / "pref-profile-home", options, guard)
            run = setup(plan, guard, show_progress=False)
            tc = run.config.train
            first, second = (step_samples(run.samples, k, run.steps_per_epoch, batch, tc.seed) for k in range(2))
            train_step(run, first)  # warm-up: allocator, thread pools, lazy inits
            started = time.perf_counter()
            with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                with record_function("## step"):
                    train_step(run, second)
            walls[method] = time.perf_counter() - started
            vocab = run.model.get_output_embeddings().weight.shape[0]
            table[method], rest = shares(prof.events(), run.config.adapter.rank, vocab)
            top = sorted(rest.items(), key=lambda kv: -kv[1])[:6]
            print(f"{method}: element-wise and other, largest: " + ", ".join(f"{n} {t:.2f} s" for n, t in top))
    lines = [
        f"profile of step 2 ({suite['tokens_per_step'][1]} tokens, both sides), {torch.get_num_threads()} thread(s): "
        + ", ".join(f"{m} {w:.1f} s wall" for m, w in walls.items()),
        "| work | sft s | dpo s |",
        "|---|---|---|",
    ]
    for kind in ORDER:
        lines.append(f"| {kind} | {table['sft'].get(kind, 0.0):.2f} | {table['dpo'].get(kind, 0.0):.2f} |")
    return lines


# ---------------------------------------------------------------- the driver


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_arm(arm: str, suite: dict, threads: int) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": python_path()}
    started = time.perf_counter()
    command = [sys.executable, __file__, "--arm", arm, "--suite-json", json.dumps(suite), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:]) | {"wall_s": time.perf_counter() - started}
    raise SystemExit(f"arm {arm} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def python_path() -> str:
    """The children import the same loratune as this process (the worktree's src when run from one)."""
    import loratune

    src = str(Path(loratune.__file__).resolve().parents[1])
    return os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])


def trl_importable() -> bool:
    done = subprocess.run([sys.executable, "-c", "import trl"], capture_output=True)
    return done.returncode == 0


KEYS = (("useful_tok_s", 1), ("cpu_tok_s", 1), ("first_step_s", 1), ("wall_s", 1))


def report(results: dict[str, list[dict]], suite: dict, peak: float) -> list[str]:
    def spread(runs, key, digits):
        values = [r[key] for r in runs]
        text = f"{statistics.median(values):.{digits}f}"
        return text + (f" [{min(values):.{digits}f} - {max(values):.{digits}f}]" if len(values) > 1 else "")

    runs_per_arm = len(next(iter(results.values())))
    lines = [
        f"\n### {len(suite['trl_pairs'])} pairs, {suite['steps']} steps of {suite['batch']} pairs "
        f"({sum(suite['tokens_per_step'])} tokens, both sides); {runs_per_arm} runs per arm, median [min - max]",
        "| arm | useful tok/s | tok per CPU s | first step s | wall s | peak RSS GB | MFU |",
        "|---|---|---|---|---|---|---|",
    ]
    med = {arm: statistics.median(r["useful_tok_s"] for r in runs) for arm, runs in results.items()}
    cpu = {arm: statistics.median(r["cpu_tok_s"] for r in runs) for arm, runs in results.items()}
    for arm, runs in results.items():
        cells = [spread(runs, key, digits) for key, digits in KEYS]
        rss = spread(runs, "peak_rss_gb", 2)
        mfu = med[arm] * suite["flops_per_token"] / (peak * 1e9)
        lines.append(f"| {arm} | {' | '.join(cells)} | {rss} | {mfu:.0%} |")
    ratios = [f"{arm}/sft {med[arm] / med['sft']:.2f}" for arm in med if arm != "sft" and "sft" in med]
    ratios += [f"dpo/{arm} {med['dpo'] / med[arm]:.2f}" for arm in med if arm.startswith("trl") and "dpo" in med]
    lines.append("tokens/s ratios (medians): " + ", ".join(ratios) + " (target: dpo/sft >= 0.85)")
    cpu_ratios = [f"{arm}/sft {cpu[arm] / cpu['sft']:.2f}" for arm in cpu if arm != "sft" and "sft" in cpu]
    lines.append("tokens per CPU second ratios (medians): " + ", ".join(cpu_ratios))
    if "dpo" in results and "dpo-noref" in results:
        gap = max(abs(a - b) for x, y in zip(results["dpo"], results["dpo-noref"], strict=True)
                  for a, b in zip(x["losses"], y["losses"], strict=True))  # fmt: skip
        lines.append(f"guard: dpo vs dpo-noref per-step losses differ by at most {gap:.2e}")
    lines.append("runs: " + json.dumps(results))
    return lines


def default_threads() -> int:
    """OMP_NUM_THREADS if set; else the cores the load average leaves free (at least one)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (os.cpu_count() or 1) - round(os.getloadavg()[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run per arm")
    parser.add_argument("--repeats", type=int, default=3, help="runs per arm, interleaved A B C A B C")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated, from " + ", ".join(ARMS))
    parser.add_argument("--pairs", type=int, default=64, help="the first N pairs of the data")
    parser.add_argument("--batch", type=int, default=16, help="pairs per optimizer step (SFT: twice as many sides)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps (one epoch at most)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per arm (0: OMP_NUM_THREADS, else free)")
    parser.add_argument("--profile", action="store_true", help="instead: one SFT and one DPO step, by kind of work")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--suite-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = args.threads or default_threads()
    if args.arm:
        return arm_main(args.arm, json.loads(args.suite_json), threads)

    import torch

    torch.set_num_threads(threads)
    arms = args.arms.split(",")
    if any(a.startswith("trl") for a in arms) and not trl_importable():
        print(f"note: trl is not importable by {sys.executable}: the TRL arms are skipped (bench/requirements.txt)")
        arms = [a for a in arms if not a.startswith("trl")]
    CACHE.mkdir(parents=True, exist_ok=True)
    suite = prepare(args.pairs, args.batch, args.steps)
    if args.profile:
        return print("\n".join(profile_methods(suite)), flush=True)
    peak = matmul_peak_gflops()
    header = (
        f"{os.cpu_count()} cores, {threads} torch thread(s) per arm, fp32 matmul peak {peak:.1f} GFLOP/s; "
        f"torch {torch.__version__}; {load()}"
    )
    print(header, flush=True)
    results = {arm: [] for arm in arms}
    for r in range(1 if args.quick else args.repeats):
        for arm in arms:
            before = load()
            results[arm].append(run_arm(arm, suite, threads))
            shown = {k: v for k, v in results[arm][-1].items() if k != "losses"}
            print(f"run {r + 1} {arm}: {shown} ({before}; after: {load()})", flush=True)
    lines = [header, *report(results, suite, peak)]
    print("\n".join(lines[1:]), flush=True)
    (CACHE / "preference-report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
