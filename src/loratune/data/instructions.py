"""Instruction records (any shape but `text`, see data.shapes) -> prompt/response token ids, loss on the response only.

A record is rendered as text segments, each marked trained or not:
- chats (`messages`, ShareGPT `conversations`, prompt/completion message lists) through the chat template
  (`data.chat_template`: the tokenizer's, or a named one); assistant turns are trained (`data.train_on`: all of
  them, or the last), but never those of a prompt/completion record's prompt; a `tools` list and tool calls go to
  the template, which must render them (the turn-by-turn rendering is data.chats);
- alpaca records (instruction / input / output / system) through the chat template when the model has one (format
  'auto' or 'chat'), else through a text-generation-webui format file ('alpaca' ships with loratune);
- prompt/completion texts as they are: the prompt masked, the completion trained;
- a format file (data.format) maps a comma-separated key set to a template with %key% placeholders; the text from
  the last placeholder on is the response. Every record that is not a chat goes through it.
The full text is tokenized once; a token is trained when any of its characters is in a trained segment.
EOS ends every response.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from loratune.config import DataSpec
from loratune.data import shapes
from loratune.data.chat_templates import NAMED, resolve_chat_template
from loratune.data.chats import Segments, alpaca_to_messages, chat_segments
from loratune.data.samples import IGNORE, DataReport, Sample, adds_bos, read_text, wants_bos
from loratune.data.shapes import check_messages
from loratune.errors import LoratuneError
from loratune.workspace import Workspace, inside

_PLACEHOLDER = re.compile(r"%([A-Za-z0-9_]+)%")


# The data check measures samples over the cutoff up to this many cutoffs: measuring a 50 MB record exactly would
# tokenize all of it (gigabytes) only to draw one bar; longer ones show at this length.
UNCAPPED_FACTOR = 16


@dataclass
class Built:
    """A block's samples, each one's length before the cutoff acted (up to UNCAPPED_FACTOR cutoffs), and those
    lengths for the records the cutoff dropped (that would be samples without it): the data check's histogram."""

    samples: list[Sample] = field(default_factory=list)
    full: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)


def build(
    records: list[tuple[int, dict]], file: Path, unit: str, tokenizer, spec: DataSpec, ws: Workspace, report: DataReport
) -> Built:
    """Samples of a file's (number, record) pairs; `unit` ('record', 'row') is how errors count them."""
    budget = char_budget(tokenizer, spec.cutoff)
    template = resolve_chat_template(spec.chat_template, tokenizer)
    last_only = spec.train_on == "last_assistant"
    render = make_renderer(spec.format, tokenizer, ws, template, budget, last_only)
    built, unmatched, bos = Built(), {}, wants_bos(tokenizer, spec.add_bos)
    renderers = {"longer": None}  # the renderer that measures a record past the cutoff, made when one is

    def sample_of(record: dict, where: str) -> tuple[Sample | None, int, int | None]:
        """(the record's sample, None when it is dropped and counted in the report; its length before the cutoff;
        that length again when the cutoff dropped a record that would train, for the data check's histogram)."""
        segments = _segments(render, record, where, spec, tokenizer)
        # Text past the budget cannot reach the cutoff's tokens: tokenize only up to it (a 50 MB record costs
        # milliseconds to drop or cut, not gigabytes), unless this tokenizer made fewer tokens of it than that.
        sample = _tokenize_within(segments, budget, spec.cutoff, tokenizer, bos)
        full, trains = len(sample.input_ids), True
        if full > spec.cutoff:
            if renderers["longer"] is None:
                long_budget = _long_budget(tokenizer, spec)
                renderers["longer"] = make_renderer(spec.format, tokenizer, ws, template, long_budget, last_only)
            full, trains = _measure(renderers["longer"], record, where, spec, tokenizer, bos, sample)
            if spec.too_long == "drop":
                report.too_long += 1
                return None, full, full if trains else None
            report.truncated += 1
            sample = Sample(sample.input_ids[: spec.cutoff], sample.labels[: spec.cutoff])
        if all(label == IGNORE for label in sample.labels[1:]):  # the first token is never predicted
            report.nothing_to_train += 1  # e.g. a prompt that fills the cutoff: dropped, never a 0/0 loss
            return None, full, full if full > spec.cutoff and trains else None
        return sample, full, None

    for number, record in records:
        where = f"{file} {unit} {number}"
        try:  # a preference record is two samples side by side, or neither: pairs stay pairs
            shape, desirable = shapes.shape_of(record), None
            if shape == "preference":
                sides = shapes.preference_sides(record, where)
            elif shape == "kto":  # one sample that carries its label
                side, desirable = shapes.kto_side(record, where)
                sides = [side]
            else:
                sides = [record]
            made = [sample_of(side, where) for side in sides]
        except NoKeySet as e:  # collected, so the error lists every key set the data has that the format lacks
            unmatched.setdefault(e.keys, []).append(number)
            continue
        if all(sample is not None for sample, _, _ in made):
            for sample, _, _ in made:
                sample.desirable = desirable
            built.samples += [sample for sample, _, _ in made]
            built.full += [full for _, full, _ in made]
        else:
            built.dropped += [length for _, _, length in made if length is not None]
    if unmatched:
        found = "; ".join(
            f"{keys or '(no text keys)'} ({_records(numbers, unit)})" for keys, numbers in unmatched.items()
        )
        raise LoratuneError(
            f"{file}: {unit}s whose keys match no key set of format '{spec.format}': {found}; the format knows: "
            f"{'; '.join(load_format_keys(spec.format, ws))}; add a template for these keys or fix the {unit}s"
        )
    return built


def _segments(render, record: dict, where: str, spec: DataSpec, tokenizer) -> Segments:
    """A record's segments as they are tokenized: rendered, EOS appended, data.train_only_after applied."""
    segments = render(record, where)
    if not segments:
        raise LoratuneError(f"{where}: renders to no text; give it a response")
    if spec.add_eos and tokenizer.eos_token and not segments[-1][0].rstrip().endswith(tokenizer.eos_token):
        segments.append((tokenizer.eos_token, True))
    if spec.train_only_after:
        segments = only_after(segments, spec.train_only_after)
    check_text(segments, where)
    return segments


def _tokenize_within(segments: Segments, budget: int, cutoff: int, tokenizer, bos: bool) -> Sample:
    """The segments' sample, tokenized up to `budget` characters (all of them when that makes `cutoff` or fewer)."""
    clipped = clip(segments, budget)
    sample = tokenize_segments(clipped, tokenizer, bos)
    if clipped is not segments and len(sample.input_ids) <= cutoff:
        sample = tokenize_segments(segments, tokenizer, bos)
    return sample


def _long_budget(tokenizer, spec: DataSpec) -> int:
    return char_budget(tokenizer, spec.cutoff * UNCAPPED_FACTOR)


def _measure(render, record: dict, where: str, spec: DataSpec, tokenizer, bos: bool, within: Sample):
    """(length, trains): a record over the cutoff, rendered and tokenized up to UNCAPPED_FACTOR cutoffs, and
    whether it has tokens to train there. A record that renders only within the cutoff (a chat too long to render in
    full) is measured by `within`, its sample up to the cutoff's budget."""
    longest = spec.cutoff * UNCAPPED_FACTOR
    try:
        segments = _segments(render, record, where, spec, tokenizer)
        sample = _tokenize_within(segments, _long_budget(tokenizer, spec), longest, tokenizer, bos)
    except LoratuneError:
        sample = within
    trains = any(label != IGNORE for label in sample.labels[1:longest])
    return min(len(sample.input_ids), longest), trains


class NoKeySet(LoratuneError):
    """A record's key set has no template in the format file."""

    def __init__(self, message: str, keys: str):
        super().__init__(message)
        self.keys = keys


def char_budget(tokenizer, cutoff: int) -> int:
    """Characters that surely hold more than `cutoff` tokens: no token spells more characters than the longest
    vocabulary entry (twice that, for margin at the cut)."""
    longest = getattr(tokenizer, "_loratune_longest_entry", None)
    if longest is None:
        longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
        tokenizer._loratune_longest_entry = longest  # get_vocab() builds a dict of the whole vocabulary: once
    return 2 * cutoff * max(1, longest)


def clip(segments: Segments, budget: int) -> Segments:
    """The first `budget` characters of the segments (the same list when they are shorter)."""
    if sum(len(piece) for piece, _ in segments) <= budget:
        return segments
    kept, left = [], budget
    for piece, trained in segments:
        if left <= 0:
            break
        kept.append((piece[:left], trained))
        left -= len(piece)
    return kept


def check_text(segments: Segments, where: str) -> None:
    """Refuse text no tokenizer can take: a lone surrogate (\\ud800 in JSON) is not a character of any encoding."""
    for piece, _ in segments:
        try:
            piece.encode("utf-8")
        except UnicodeEncodeError as e:
            raise LoratuneError(
                f"{where}: holds a lone surrogate ({piece[e.start]!r}), which is not text; fix the record "
                "(an emoji split in two halves?)"
            ) from None


def _records(numbers: list[int], unit: str = "record") -> str:
    if len(numbers) == 1:
        return f"{unit} {numbers[0]}"
    more = f", ... ({len(numbers)} in all)" if len(numbers) > 5 else ""
    return f"{unit}s {', '.join(map(str, numbers[:5]))}{more}"


def load_format_keys(fmt: str, ws: Workspace) -> list[str]:
    return list(load_format("alpaca" if fmt in ("auto", "chat") else fmt, ws))


NO_TEMPLATE = f"set data.chat_template ({', '.join(NAMED)} or a .jinja file)"


def uses_format_file(fmt: str) -> bool:
    """data.format names a format file: every record but a chat goes through it."""
    return fmt not in ("auto", "chat")


def make_renderer(
    fmt: str,
    tokenizer,
    ws: Workspace,
    chat_template: str | None | bool = True,
    budget: int | None = None,
    last_only: bool = False,
):
    """A function (record, where) -> Segments for the chosen format.

    `chat_template`: the Jinja text chats are rendered with (None: there is none; True: the tokenizer's own);
    a chat stops rendering past `budget` characters (the rest is beyond the cutoff); `last_only` trains only the
    last assistant turn of a chat."""
    if chat_template is True:
        chat_template = resolve_chat_template("auto", tokenizer)
    if fmt == "chat" and not chat_template:
        raise LoratuneError(
            f"data.format 'chat' needs a chat template and this model has none; {NO_TEMPLATE}, "
            "or use data.format alpaca or a format file"
        )
    templates = load_format(fmt, ws) if uses_format_file(fmt) else None
    fallback = load_format("alpaca", ws) if templates is None and not chat_template else None

    def chat(messages: list[dict], record: dict, where: str, prompt_turns: int = 0) -> Segments:
        if not chat_template:
            raise LoratuneError(f"{where}: a chat needs a chat template and this model has none; {NO_TEMPLATE}")
        messages, tools = check_messages(messages, where), shapes.tools_of(record, where)
        return chat_segments(messages, tokenizer, where, chat_template, budget, tools, last_only, prompt_turns)

    def render(record: dict, where: str) -> Segments:
        shape = shapes.shape_of(record)
        if shape == "chat":
            if not chat_template:  # the message training gave before ShareGPT and tools came
                raise LoratuneError(f"{where}: 'messages' needs a chat template and this model has none; {NO_TEMPLATE}")
            return chat(record["messages"], record, where)
        if shape == "sharegpt":
            return chat(shapes.sharegpt_messages(record, where), record, where)
        if shape == "completion" and isinstance(record["prompt"], list):  # the prompt's turns are masked, as TRL does
            return chat(shapes.completion_parts(record, where), record, where, len(record["prompt"]))
        if templates is not None:
            return format_segments(record, templates, where)
        if shape == "completion":
            prompt, completion = shapes.completion_parts(record, where)
            return [(prompt, False), (completion, True)]
        if fallback is not None:
            return format_segments(record, fallback, where)
        return chat_segments(alpaca_to_messages(record, where), tokenizer, where, chat_template, budget)

    return render


def load_format(fmt: str, ws: Workspace) -> dict[str, str]:
    """A format file: a path, a name in formats/, or one shipped with loratune ('alpaca', 'vicuna')."""
    path = Path(fmt).expanduser()
    if not path.is_file():
        name = fmt if fmt.endswith(".json") else f"{fmt}-format.json"
        local = inside(ws.formats, name) if ws.formats.is_dir() else None
        if local is not None and local.is_file():
            path = local
        else:
            shipped = resources.files("loratune") / "formats" / name
            if not shipped.is_file():
                raise LoratuneError(
                    f"format '{fmt}' not found (as a file, in {ws.formats}, or shipped: alpaca, vicuna)"
                )
            path = Path(str(shipped))
    try:
        templates = json.loads(read_text(path))  # UTF-8 only: a UTF-16 file is refused naming the line
    except json.JSONDecodeError as e:
        raise LoratuneError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise LoratuneError(f"{path}: JSON nested too deeply to be a format file") from None
    example = '{"instruction,output": "..."}'
    if not isinstance(templates, dict) or not all(isinstance(v, str) for v in templates.values()):
        raise LoratuneError(f"{path}: a format file maps key sets to templates, e.g. {example}")
    if not templates:
        raise LoratuneError(f"{path}: the format file has no templates; add one, e.g. {example}")
    return templates


def format_segments(record: dict, templates: dict[str, str], where: str) -> Segments:
    """Render with the template whose key set equals the record's non-empty keys (text-generation-webui rules)."""
    present = {k for k, v in record.items() if isinstance(v, str) and v.strip()}
    keys = find_key_set(templates, present)
    if keys is None:
        known = "; ".join(templates)
        found = ",".join(sorted(present))
        raise NoKeySet(f"{where}: its keys {found or '(none)'} match no key set of the format ({known})", found)
    prompt, response = split_template(templates[keys], keys, where)
    return [(fill(prompt, record, where), False), (fill(response, record, where), True)]


def find_key_set(templates: dict[str, str], keys: set[str]) -> str | None:
    return next((k for k in templates if {part.strip() for part in k.split(",")} == keys), None)


def split_template(template: str, keys: str, where: str) -> tuple[str, str]:
    """(prompt, response): the response is the text from the last placeholder on."""
    holes = list(_PLACEHOLDER.finditer(template))
    if not holes:
        raise LoratuneError(f"{where}: template for '{keys}' has no %key% placeholder")
    return template[: holes[-1].start()], template[holes[-1].start() :]


def response_key(template: str) -> str:
    """The key of a template's last placeholder: the one that holds the response."""
    return _PLACEHOLDER.findall(template)[-1]


def fill(text: str, record: dict, where: str) -> str:
    return _PLACEHOLDER.sub(lambda m: _value(record, m.group(1), where), text)


def only_after(segments: Segments, marker: str) -> Segments:
    """data.train_only_after: mask everything up to the marker's first occurrence (nothing trained when absent)."""
    text = "".join(piece for piece, _ in segments)
    at = text.find(marker)
    if at < 0:
        return [(text, False)]
    cut = at + len(marker)
    return [(text[:cut], False), (text[cut:], True)]


def tokenize_segments(segments: Segments, tokenizer, bos: bool | None = None) -> Sample:
    """Token ids and labels of the joined segments; `bos` puts BOS first (None: as the tokenizer does by itself)."""
    text = "".join(s for s, _ in segments)
    bounds, pos = [], 0
    for piece, trained in segments:
        bounds.append((pos, pos + len(piece), trained))
        pos += len(piece)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    ends = [hi for _, hi, _ in bounds]
    labels = [
        tok if _trained(span, bounds, ends) else IGNORE
        for tok, span in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    bos = adds_bos(tokenizer) if bos is None else bos
    if bos and not text.startswith(tokenizer.bos_token or "\0"):
        ids, labels = [tokenizer.bos_token_id] + ids, [IGNORE] + labels
    return Sample(ids, labels)


def _trained(span: tuple[int, int], bounds, ends: list[int]) -> bool:
    """A token is trained when any of its characters is response text (' the' after 'A:' holds a response word).

    `bounds` are in text order and `ends` their end offsets: bisect finds the first segment the token can touch, so
    a chat of many turns costs no more per token than one of few."""
    start, end = span
    end = max(end, start + 1)
    for n in range(bisect_right(ends, start), len(bounds)):
        lo, hi, trained = bounds[n]
        if lo >= end:
            return False
        if trained and hi > start:
            return True
    return False


def _value(record: dict, key: str, where: str) -> str:
    if key not in record:
        raise LoratuneError(f"{where}: template placeholder %{key}% has no key '{key}' in the record")
    return str(record[key])
