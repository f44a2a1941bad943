"""Sampling options, and the one place that turns them into model.generate() keyword arguments.

`loratune generate` (GenerateSpec) and `loratune serve` (a request's fields) both build a `Sampling`; the Generator
passes `generate_kwargs()` to transformers' generate(), the server's batcher reads the same dict row by row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loratune.prompting import PromptContract, sampling_options, stop_options


@dataclass
class Sampling:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0
    seed: int | None = None  # None: not seeded
    stop: list[str] = field(default_factory=list)  # texts that end the answer, beside the contract's own stops

    @classmethod
    def of(cls, spec) -> Sampling:
        """The sampling options of a GenerateSpec (its seed -1 means unseeded)."""
        return cls(
            max_new_tokens=spec.max_new_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            top_k=spec.top_k,
            repetition_penalty=spec.repetition_penalty,
            seed=None if spec.seed < 0 else spec.seed,
        )


def generate_kwargs(sampling: Sampling, contract: PromptContract, tokenizer) -> dict:
    """model.generate() keyword arguments: length, sampling, padding, and the stops (the contract's stop ids and
    texts plus `sampling.stop`). The seed is not among them: the caller seeds its random generator with it."""
    return {
        "max_new_tokens": sampling.max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        **sampling_options(sampling.temperature, sampling.top_p, sampling.top_k, sampling.repetition_penalty),
        **stop_options(contract, tokenizer, sampling.stop),
    }
