"""Look at a dataset the way training will see it, before any training: counts, lengths against the cutoff, a mask
view of a few samples, and the warnings that catch silently useless runs (no EOS learned, nothing trained, a chat
template the masking cannot follow, padding that masks EOS away).

Everything comes from the real builders (data.build / instructions / raw_text) and the real collate, so what is
checked is what is trained. `loratune data check` prints the result; the web UI draws it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from loratune.config import DataSpec
from loratune.data.batching import collate
from loratune.data.build import find_data, is_raw_text, read_samples
from loratune.data.samples import IGNORE, Sample
from loratune.data.store import SampleSet
from loratune.errors import LoratuneError
from loratune.workspace import Workspace

HISTOGRAM_BINS = 8  # equal bins from 0 to the cutoff, plus one for the samples over it


@dataclass
class DataWarning:
    message: str
    """One line saying what is wrong and what to do."""
    problem: bool = False
    """True when training on this data would be silently useless (the check then fails)."""


@dataclass
class Bin:
    low: int
    high: int
    """Token lengths low..high (inclusive) fall in this bin."""
    count: int
    over_cutoff: bool = False


@dataclass
class DataCheck:
    kind: str
    """'raw text', 'instruction' or 'mixed' (or '' when the data could not be read at all)."""
    path: str
    cutoff: int
    cached: bool = False
    """The samples were read from the tokenized-data cache (datasets/.cache/), not tokenized again."""
    shapes: dict[str, int] = field(default_factory=dict)
    """Records per shape (alpaca, chat, sharegpt, completion, text; 'raw text': .txt / .md files)."""
    files: dict[str, int] = field(default_factory=dict)
    """Files read per suffix."""
    file_shapes: list[str] = field(default_factory=list)
    """One line per file read: its name and its records per shape."""
    skipped: list[str] = field(default_factory=list)
    """Files of a folder that were not read, and why."""
    datasets: list[str] = field(default_factory=list)
    """One summary line per dataset when data.path is a list."""
    records: int = 0
    """Records read (instruction data) or text blocks between hard cuts (raw text)."""
    samples: int = 0
    """Samples that would be trained."""
    tokens: int = 0
    trained_tokens: int = 0
    """Tokens whose label is kept (the loss is taken on them)."""
    over_cutoff: int = 0
    """Samples longer than the cutoff before it acts."""
    dropped_too_long: int = 0
    truncated: int = 0
    dropped_nothing_to_train: int = 0
    dropped_too_short: int = 0
    """Raw text: blocks shorter than data.min_chunk."""
    samples_with_eos: int = 0
    """Samples with EOS among the trained tokens (the model learns to stop there)."""
    labels: dict[str, int] = field(default_factory=dict)
    """KTO data: samples per label ('desirable', 'undesirable')."""
    histogram: list[Bin] = field(default_factory=list)
    examples: list[list[tuple[str, bool]]] = field(default_factory=list)
    """A few samples as (text, trained) segments, in order: the mask view."""
    example_labels: list[str] = field(default_factory=list)
    """Each example's KTO label ('desirable', 'undesirable'; '' for a sample of any other record)."""
    warnings: list[DataWarning] = field(default_factory=list)

    @property
    def has_problems(self) -> bool:
        return any(w.problem for w in self.warnings)

    @property
    def dropped(self) -> int:
        return self.dropped_too_long + self.dropped_nothing_to_train + self.dropped_too_short

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"has_problems": self.has_problems, "dropped": self.dropped}

    def warn(self, message: str, problem: bool = False) -> None:
        self.warnings.append(DataWarning(message, problem))


def check_data(spec: DataSpec, tokenizer, ws: Workspace | None = None, examples: int = 3) -> DataCheck:
    """Build the dataset as training would and report on it; user mistakes become warnings, not exceptions.

    Args:
        spec: the data options (path, format, cutoff, ...), as for training.
        tokenizer: the base model's tokenizer (its pad token set as training sets it).
        examples: how many samples to return as (text, trained) segments.
    Returns:
        A DataCheck; `has_problems` is True when training on it would be silently useless.
    """
    ws = ws or Workspace.resolve()
    path = find_data(spec.path, ws, spec.revision)  # a missing file is an error, not a finding
    shown = ", ".join(map(str, path)) if isinstance(path, list) else str(path)
    check = DataCheck(kind="", path=shown, cutoff=spec.cutoff)
    try:
        samples, report = read_samples(spec, tokenizer, ws)
    except LoratuneError as e:  # a record the builders refuse (template, keys, JSON): training would stop there
        check.kind = "raw text" if is_raw_text(path, spec.columns) else "instruction"
        check.warn(str(e), problem=True)
        return check

    check.kind, check.path, check.cached = report.kind, report.path, report.cached
    check.shapes, check.files, check.skipped = report.shapes, report.files, report.skipped
    check.file_shapes = report.file_shapes
    if report.parts:
        check.datasets = [p.summary() for p in report.parts]
        for number, part in enumerate(report.parts, 1):
            check.file_shapes += [f"[{number}] {line}" for line in part.file_shapes]
    check.records, check.samples = report.records, len(samples)
    check.tokens, check.trained_tokens = report.tokens, report.trained_tokens
    check.dropped_nothing_to_train, check.dropped_too_short = report.nothing_to_train, report.too_short
    # Lengths before the cutoff acted (up to instructions.UNCAPPED_FACTOR cutoffs), of the samples and of the records
    # the cutoff dropped, recorded by the one build: from the sample table, no sample is built to be measured.
    lengths = np.concatenate([samples.column("full"), samples.dropped_lengths()])
    check.over_cutoff = int((lengths > spec.cutoff).sum())
    # Whatever rule data options set for long samples, a sample either survives (cut) or does not (dropped).
    check.dropped_too_long, check.truncated = report.too_long, report.truncated
    check.histogram = histogram(lengths, spec.cutoff)
    check.examples = [segments(s, tokenizer) for s in samples[:examples]]
    check.example_labels = [label_of(s.desirable) for s in samples[:examples]]
    if "kto" in check.shapes:
        desirable = samples.column("desirable")
        check.labels = {"desirable": int((desirable == 1).sum()), "undesirable": int((desirable == 0).sum())}
    eos = tokenizer.eos_token_id
    check.samples_with_eos = int(samples.column("eos").sum()) if eos is not None else 0
    _warn(check, spec, tokenizer, samples)
    return check


def _warn(check: DataCheck, spec: DataSpec, tokenizer, samples: SampleSet) -> None:
    where = check.path
    only_eos = int(samples.column("only_eos").sum())
    if only_eos:  # a template that drops the response still gets the EOS appended: that alone teaches nothing
        check.warn(
            f"{only_eos} of {len(samples)} samples train only the EOS token, no response text", only_eos == len(samples)
        )
    if check.dropped_nothing_to_train:
        marker = f" (data.train_only_after {spec.train_only_after!r} not in them?)" if spec.train_only_after else ""
        check.warn(
            f"{check.dropped_nothing_to_train} of {check.records} records have nothing to train after masking "
            f"and are dropped{marker}"
        )
    if check.dropped_too_long:
        check.warn(
            f"{check.dropped_too_long} samples are longer than data.cutoff {spec.cutoff} and are dropped; "
            "raise data.cutoff to keep them"
        )
    if check.truncated:
        check.warn(f"{check.truncated} samples are longer than data.cutoff {spec.cutoff} and are cut")
    if check.dropped_too_short:
        check.warn(f"{check.dropped_too_short} raw-text blocks are shorter than data.min_chunk and are dropped")
    if not samples:
        check.warn(f"{where}: no sample is left to train ({check.dropped} dropped, see above)", True)
        return
    _warn_eos(check, spec, tokenizer, samples)
    if "preference" in check.shapes:
        _warn_pairs(check, samples)
    if "kto" in check.shapes and 0 in check.labels.values():
        kind = "desirable" if check.labels["desirable"] else "undesirable"
        check.warn(f"all {len(samples)} labelled samples are {kind}: KTO learns from the contrast of the two kinds")


def _warn_pairs(check: DataCheck, samples: SampleSet) -> None:
    """Preference data: samples go chosen, rejected, ...; a pair whose sides are the same teaches nothing."""
    same = sum(samples[i].input_ids == samples[i + 1].input_ids for i in range(0, len(samples) - 1, 2))
    if same:
        pairs = len(samples) // 2
        check.warn(f"{same} of {pairs} preference pairs have the same chosen and rejected answer: they teach nothing",
                   same == pairs)  # fmt: skip
    if check.dropped_too_long or check.dropped_nothing_to_train:
        check.warn("a preference pair is dropped whole when either of its sides is (samples #1, #2 are pair 1)")


def _warn_eos(check: DataCheck, spec: DataSpec, tokenizer, samples: SampleSet) -> None:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None:
        check.warn("the tokenizer has no EOS token: the model cannot learn where an answer ends")
        return
    if check.samples_with_eos == 0:
        if not spec.add_eos:
            check.warn("no EOS in the trained tokens (data.add_eos is off): the model will not learn to stop")
        elif check.kind == "raw text":  # EOS ends each file's last block; that block may be too short and dropped
            check.warn("no EOS in the trained tokens: the last blocks of the files (which end in EOS) were dropped")
        else:  # asked for and still absent: something masks it away
            check.warn(
                "no EOS in the trained tokens although data.add_eos is on: the model will not learn to stop", True
            )
    elif check.kind == "instruction" and check.samples_with_eos < check.samples:
        check.warn(f"{check.samples - check.samples_with_eos} of {check.samples} samples train no EOS")
    # The first samples that train EOS (== pad here), found in the sample table.
    with_eos = [samples[int(i)] for i in np.flatnonzero(samples.column("eos"))[:8]] if pad == eos else []
    if pad is not None and pad == eos and eos_masked_by_padding(with_eos, pad, collate):
        check.warn("pad token == EOS and the batches mask padding by token id, so EOS is never trained", True)


def eos_masked_by_padding(samples: list[Sample], pad_id: int, collate_fn) -> bool:
    """Does `collate_fn` drop trained EOS labels (the pad == eos trap: labels[input_ids == pad] = -100)?"""
    with_eos = [s for s in samples if pad_id in _trained_ids(s)][:8]
    if not with_eos:
        return False
    batch = collate_fn(with_eos, pad_id)
    kept = int((batch["labels"] == pad_id).sum())
    return kept < sum(_trained_ids(s).count(pad_id) for s in with_eos)


def histogram(lengths: list[int], cutoff: int, bins: int = HISTOGRAM_BINS) -> list[Bin]:
    """Equal bins over 1..cutoff, then one bin for lengths over the cutoff (empty when none are)."""
    width = max(1, -(-cutoff // bins))
    edges = list(range(0, cutoff, width)) + [cutoff]
    lengths = np.asarray(lengths, dtype=np.int64)
    result = [
        Bin(lo + 1, hi, int(((lengths > lo) & (lengths <= hi)).sum())) for lo, hi in zip(edges, edges[1:], strict=False)
    ]
    over = lengths[lengths > cutoff]
    if len(over):
        result.append(Bin(cutoff + 1, int(over.max()), len(over), over_cutoff=True))
    return result


def segments(sample: Sample, tokenizer) -> list[tuple[str, bool]]:
    """The sample's text as runs of trained / masked tokens, each run decoded once."""
    runs: list[tuple[list[int], bool]] = []
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        trained = label != IGNORE
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(token)
        else:
            runs.append(([token], trained))
    return [(tokenizer.decode(ids, skip_special_tokens=False), trained) for ids, trained in runs]


def label_of(desirable: bool | None) -> str:
    return "" if desirable is None else "desirable" if desirable else "undesirable"


def _trained_ids(sample: Sample) -> list[int]:
    return [label for label in sample.labels if label != IGNORE]
