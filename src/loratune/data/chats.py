"""Chats as masked text segments: an alpaca record as messages, a chat rendered through its chat template turn by
turn so that each assistant turn is the trained text (data.instructions builds samples from these), and the same
rendering for generation (prompting)."""

from __future__ import annotations

from loratune.errors import LoratuneError

Segments = list[tuple[str, bool]]  # (text, trained) pieces of a rendered record, in order


def alpaca_to_messages(record: dict, where: str) -> list[dict]:
    for key in ("instruction", "output"):
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise LoratuneError(f"{where}: '{key}' must be text, got {type(value).__name__} {str(value)[:40]!r}")
    instruction, output = record.get("instruction"), record.get("output")
    empty = [k for k, v in (("instruction", instruction), ("output", output)) if v is not None and not v.strip()]
    if empty:
        raise LoratuneError(f"{where}: '{empty[0]}' is empty; give it text or remove the record")
    if not instruction or not output:
        keys = ", ".join(record) or "(none)"
        raise LoratuneError(
            f"{where}: needs non-empty text 'instruction' and 'output' (or a 'messages' list); it has: {keys}; "
            "other shapes: 'conversations' (ShareGPT), 'prompt' + 'completion', 'text'; data.columns renames columns"
        )
    extra = record.get("input")
    user = instruction + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.insert(0, {"role": "system", "content": record["system"]})
    return messages


MAX_CHAT_TURNS = 128  # each assistant turn re-renders the chat before it: cost grows with the square of the turns


def chat_segments(
    messages: list[dict],
    tokenizer,
    where: str,
    chat_template: str | None = None,
    budget: int | None = None,
    tools: list[dict] | None = None,
    last_only: bool = False,
    prompt_turns: int = 0,
) -> Segments:
    """Render progressively: what each assistant turn adds to the prompt before it is the trained text.

    `chat_template`: the Jinja text to render with (None: the tokenizer's own). Rendering stops once `budget`
    characters are rendered (an append-only template makes the rest a suffix beyond the cutoff); a chat needing more
    than MAX_CHAT_TURNS renders is refused rather than taking minutes. `tools` go to the template, which must show
    them (and every tool call and tool turn); `last_only` trains the last assistant turn alone; the first
    `prompt_turns` messages are a prompt (a prompt/completion record's), none of their turns trained.
    """

    def render(upto: int, prompt: bool) -> str:
        return render_chat_text(messages[:upto], tokenizer, chat_template, prompt, where, tools)

    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    segments, done, turns = [], "", 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if budget is not None and len(done) > budget:
            break
        turns += 1
        if turns > MAX_CHAT_TURNS:
            total = sum(m["role"] == "assistant" for m in messages)
            raise LoratuneError(
                f"{where}: a chat of {total} assistant turns; loratune renders at most {MAX_CHAT_TURNS} per chat "
                "(each turn re-renders the whole chat before it): split it into shorter chats"
            )
        prompt, full = render(i, True), render(i + 1, False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise LoratuneError(
                f"{where}: the model's chat template does not render this chat by appending turns, so the "
                "response cannot be masked; use a format file (data.format)"
            )
        trained = i >= prompt_turns and (not last_only or i == last)
        segments += [(prompt[len(done) :], False), (full[len(prompt) :], trained)]
        done = full
    if budget is None or len(done) <= budget:  # rendered in full: everything the chat holds must be in the text
        check_tools_rendered(messages, tools, done, where)
    return [s for s in segments if s[0]]


def check_tools_rendered(messages: list[dict], tools: list[dict] | None, text: str, where: str) -> None:
    """A template that ignores tools would train an empty answer where a tool call was: refuse that in one line."""
    missing = [f"tool '{_tool_name(t)}'" for t in tools or [] if _tool_name(t) and _tool_name(t) not in text]
    for n, m in enumerate(messages, 1):
        for call in m.get("tool_calls") or []:
            if call["function"]["name"] not in text:
                missing.append(f"the tool call to '{call['function']['name']}' (message {n})")
        if m["role"] == "tool" and m["content"].strip() and m["content"].strip() not in text:
            missing.append(f"the tool turn (message {n})")
    if missing:
        raise LoratuneError(
            f"{where}: the chat template does not render {missing[0]}"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; use a chat template that supports "
            "tools (data.chat_template: a .jinja file, or a model whose template has them), or drop the tool data"
        )


def _tool_name(tool: dict) -> str | None:
    function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    name = function.get("name")
    return name if isinstance(name, str) else None


def render_chat_text(
    messages: list[dict],
    tokenizer,
    chat_template: str | None,
    generation_prompt: bool,
    where: str = "this chat",
    tools: list[dict] | None = None,
) -> str:
    """A chat as text through `chat_template`: what training masks and what generation sends."""
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(
            messages,
            tools=tools,
            chat_template=chat_template,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )
    except TemplateError as e:  # the template's own raise_exception, or the sandbox's SecurityError
        raise LoratuneError(f"{where}: the chat template refuses this chat ({e})") from None
