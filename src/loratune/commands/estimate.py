"""`loratune estimate`: will training this model fit? Memory from config.json alone, and what fits a budget."""

from __future__ import annotations

from loratune.config import QUANTS, AdapterSpec, DataSpec, TrainSpec


def add(sub) -> None:
    est = sub.add_parser("estimate", help="estimate training memory from a model's config (no weights loaded)")
    est.add_argument("--model", default="default", help="model folder, name in models/, hub id, or 'default'")
    est.add_argument("--quant", choices=QUANTS, default="none", help="QLoRA base (CUDA only)")
    est.add_argument("--rank", type=int, default=AdapterSpec.rank)
    est.add_argument("--targets", default=AdapterSpec.targets, help="LoRA targets, as --adapter.targets")
    est.add_argument("--cutoff", type=int, default=DataSpec.cutoff, help="tokens per sample")
    est.add_argument("--micro-batch", type=int, default=TrainSpec.micro_batch, help="samples per forward pass")
    est.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    est.add_argument("--budget", help="memory you have, e.g. 8GB: also print the largest micro-batch and cutoff")
    est.add_argument("--trust-remote-code", action="store_true", help="allow a config that needs the model's code")
    est.set_defaults(run=run_estimate)


def run_estimate(args, extra: list[str]) -> int:
    from loratune.models.estimate import check_request, estimate, human, largest_fit, load_config, parse_size, shape_of

    check_request(args.quant, args.device, args.rank, args.targets, args.cutoff, args.micro_batch)
    config = load_config(args.model, args.home, args.trust_remote_code)
    shape = shape_of(config, args.rank, args.targets)
    options = {"device": args.device, "quant": args.quant}
    result = estimate(shape, args.micro_batch, args.cutoff, **options)
    print(
        f"{args.model} ({config.model_type}, {shape.params / 1e6:,.1f}M parameters, {shape.lora:,} LoRA parameters "
        f"at rank {args.rank}) on {args.device}, quant {args.quant}, micro-batch {args.micro_batch} x {args.cutoff} "
        "tokens:"
    )
    print(result.table())
    print(f"assumes {result.assumptions}")
    if args.budget:
        budget = parse_size(args.budget)
        batch, cutoff = largest_fit(shape, budget, args.micro_batch, args.cutoff, **options)
        verdict = "fits" if result.total <= budget else "does NOT fit"
        print(f"budget {human(budget)}: this configuration {verdict}")
        print(f"  largest micro-batch at cutoff {args.cutoff}: {batch or 'none (even 1 does not fit)'}")
        print(f"  largest cutoff at micro-batch {args.micro_batch}: {cutoff or 'none (even 8 tokens do not fit)'}")
    return 0
