"""Ollama export: the Modelfile's TEMPLATE, rendered by Go's text/template the way Ollama fills it, equals the Jinja /
format-file rendering of the same conversation character for character; the CLI writes the folder."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from gguf import GGUFReader

from conftest import CHATML
from loratune import LoratuneError, RunConfig, train
from loratune.adapters.export_ollama import (
    base_gguf_file,
    chat_go_template,
    chat_pieces,
    format_go_template,
    modelfile_text,
    ollama_template,
)
from loratune.adapters.verify import GO_RENDERER
from loratune.cli import main
from loratune.config import AdapterSpec, DataSpec, ModelSpec, TrainSpec
from loratune.data.instructions import format_segments
from loratune.workspace import Workspace

GO_RENDER = GO_RENDERER  # renders a Modelfile's TEMPLATE as Ollama does


@pytest.fixture(scope="session")
def ollama_render(tmp_path_factory):
    """render(modelfile, conversations) -> {commands: [[name, value]...], renders: [...]}; Go builds it once."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (Debian: apt-get install golang-go): the TEMPLATE cannot be rendered here")
    root = tmp_path_factory.mktemp("go")
    shutil.copyfile(GO_RENDER, root / "render.go")
    env = {**os.environ, "GOCACHE": str(root / "cache"), "GOPATH": str(root / "path"), "GO111MODULE": "off"}
    env["GOFLAGS"] = ""
    subprocess.run([go, "build", "-o", str(root / "render"), str(root / "render.go")], check=True, env=env, cwd=root)

    def render(modelfile, conversations):
        request = json.dumps({"modelfile": str(modelfile), "conversations": conversations})
        done = subprocess.run([str(root / "render")], input=request, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return render


def msg(role, content):
    return {"role": role, "content": content}


SYSTEM = msg("system", "You speak like a pirate.\nAlways.")
CONVERSATIONS = [
    [msg("user", "What is the capital of France?")],
    [SYSTEM, msg("user", "Hello")],
    [msg("user", "Hi"), msg("assistant", "Ahoy!"), msg("user", "Where is the treasure?\nTell me.")],
    [
        SYSTEM,
        msg("user", "One"),
        msg("assistant", "Two"),
        msg("user", "Three"),
        msg("assistant", "Four"),
        msg("user", "5"),
    ],
    [msg("user", 'Say {{ .Prompt }} and "quotes" """ and \\ backslash'), msg("assistant", "ok"), msg("user", "é ☺")],
    [msg("user", "Start an answer"), msg("assistant", "Arr, the answer")],  # a prefilled answer stays open
]

# Chat templates of the families people train with. Llama 3's official template (BOS first, messages trimmed);
# Mistral / Llama-2 style [INST] without a system role; Gemma's turns; Alpaca laid out as a chat (a system message
# replaces the preamble, the first instruction has no separator before it), as data.chat_template 'alpaca' makes it.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] + "
    "'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
LLAMA2 = (  # the system prompt inside the first [INST], later turns each open with BOS
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ bos_token + '[INST] <<SYS>>\\n' + m['content'] + '\\n<</SYS>>\\n\\n' }}{% elif m['role'] == 'user' %}"
    "{% if not (loop.index0 == 1 and messages[0]['role'] == 'system') %}{{ bos_token + '[INST] ' }}{% endif %}"
    "{{ m['content'] + ' [/INST]' }}{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)
ALPACA_CHAT = (
    "{%- if messages and messages[0]['role'] == 'system' -%}{{ messages[0]['content'] + '\\n\\n' }}"
    "{%- set turns = messages[1:] -%}{%- else -%}{{ 'Below is an instruction that describes a task.\\n\\n' }}"
    "{%- set turns = messages -%}{%- endif -%}{%- for message in turns -%}{%- if message['role'] == 'user' -%}"
    "{{ ('' if loop.first else '\\n\\n') + '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '### Response:\\n' + message['content'] + eos_token }}"
    "{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}{{ '### Response:\\n' }}{%- endif -%}"
)


def jinja(tokenizer, template, conversation, bos):
    final = conversation[-1]["role"] == "assistant"
    text = tokenizer.apply_chat_template(
        conversation,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=not final,
        continue_final_message=final,
    )
    return text.removeprefix(bos) if bos else text  # BOS comes from the base GGUF in llama.cpp, not the TEMPLATE


def write_modelfile(tmp_path, template, system=None, stops=("<|im_end|>",)):
    path = tmp_path / "Modelfile"
    path.write_text(modelfile_text("t", path, tmp_path / "base.gguf", None, template, system, list(stops), ["note"]))
    return path


def check_chat_template(tokenizer, template, tmp_path, ollama_render, conversations=CONVERSATIONS):
    pieces = chat_pieces(template, tokenizer)
    modelfile = write_modelfile(tmp_path, chat_go_template(pieces), pieces.default_system)
    if pieces.system_before is None:
        conversations = [c for c in conversations if c[0]["role"] != "system"]
    got = ollama_render(modelfile, conversations)["renders"]
    for conversation, rendered in zip(conversations, got, strict=True):
        assert rendered == jinja(tokenizer, template, conversation, pieces.bos), conversation
    return pieces


@pytest.mark.parametrize("name", ["chatml", "llama3", "llama2", "mistral", "gemma", "alpaca-chat"])
def test_chat_templates_render_like_jinja_in_go(name, tokenizer, tmp_path, ollama_render):
    template = {"chatml": CHATML, "llama3": LLAMA3, "llama2": LLAMA2, "mistral": MISTRAL, "gemma": GEMMA}
    template["alpaca-chat"] = ALPACA_CHAT
    pieces = check_chat_template(tokenizer, template[name], tmp_path, ollama_render)
    assert (pieces.bos is not None) == (name in ("llama3", "llama2", "mistral", "gemma"))
    assert (pieces.system_before is None) == (name in ("mistral", "gemma"))
    if name == "alpaca-chat":  # its built-in preamble is the default system prompt, replaced by a given one
        assert pieces.default_system == "Below is an instruction that describes a task."


def test_contract_system_prompt_goes_first_where_the_template_has_a_place(tokenizer, tmp_path, ollama_render):
    contract = {"kind": "chat", "chat_template": CHATML, "system": "Be a pirate.", "stop": [], "eos_token": None}
    template, system, _ = ollama_template(contract, tokenizer)
    assert system == "Be a pirate."
    modelfile = write_modelfile(tmp_path, template, system)
    conversation = [msg("user", "Hi"), msg("assistant", "Arr"), msg("user", "Bye")]
    rendered = ollama_render(modelfile, [conversation])["renders"][0]
    assert rendered == jinja(tokenizer, CHATML, [msg("system", "Be a pirate."), *conversation], None)
    assert ollama_template({**contract, "chat_template": GEMMA}, tokenizer)[1] is None  # Gemma takes no system


@pytest.mark.slow
def test_default_models_template_with_its_system_prompt(default_model_home, tmp_path, ollama_render):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_home / "models" / "SmolLM2-135M-Instruct")
    pieces = check_chat_template(tok, tok.chat_template, tmp_path, ollama_render)
    assert pieces.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    commands = dict(ollama_render(tmp_path / "Modelfile", [])["commands"])
    assert commands["system"] == pieces.default_system


@pytest.mark.parametrize(
    "template",
    [
        # the message text changed by the template (upper-cased): no marker survives
        "{% for m in messages %}{{ '<' + m['role'] + '>' + m['content']|upper }}{% endfor %}",
        # EOS only when no answer is asked for (Phi-3): a longer chat does not extend a shorter one
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}",
        # answers numbered by their position: not fixed pieces
        "{% for m in messages %}{{ loop.index|string + m['content'] }}{% endfor %}",
    ],
)
def test_unrecognised_chat_templates_are_refused_in_one_line(template, tokenizer):
    with pytest.raises(LoratuneError, match="layout an Ollama TEMPLATE cannot reproduce") as e:
        chat_pieces(template, tokenizer)
    assert "\n" not in str(e.value)


def format_records():
    return [
        {"instruction": "Name a sea.", "output": "x"},
        {"instruction": "Two lines\nhere {{ .System }}", "output": "x"},
        {"system": "Be a pirate.", "instruction": "Name a ship.", "output": "x"},
    ]


@pytest.mark.parametrize("name", ["alpaca", "vicuna", "custom"])
def test_format_files_render_like_training_prompts_in_go(name, tmp_path, ollama_render):
    from loratune.data.instructions import load_format

    if name == "custom":
        formats = {
            "system,question,answer": "<sys>%system%</sys>\nQ: %question%\nA: %answer%",
            "question,answer": "Q: %question%\nA: %answer%",
        }
    else:
        formats = load_format(name, Workspace.resolve(tmp_path))
    template, _, notes = format_go_template(formats, name)
    assert "{{ .Response }}" in template
    modelfile = write_modelfile(tmp_path, template)
    records = format_records()
    if name == "custom":
        records = [
            {k.replace("instruction", "question").replace("output", "answer"): v for k, v in r.items()} for r in records
        ]
    prompt_key = "question" if name == "custom" else "instruction"
    usable = [r for r in records if "system" not in r or name == "custom"]  # the shipped formats have no system key
    conversations = [
        ([msg("system", r["system"])] if "system" in r else []) + [msg("user", r[prompt_key])] for r in usable
    ]
    got = ollama_render(modelfile, conversations)["renders"]
    for record, rendered in zip(usable, got, strict=True):
        prompt = format_segments(record, formats, "test")[0][0]  # the untrained prompt part of a training sample
        assert rendered == prompt
    if name == "alpaca":
        assert any("instruction,input,output" in n for n in notes)  # no Ollama field for %input%


def test_raw_text_template_sends_the_prompt_as_it_is(tmp_path, ollama_render):
    modelfile = write_modelfile(tmp_path, "{{ .Prompt }}")
    assert ollama_render(modelfile, [[msg("user", "Once upon a time")]])["renders"] == ["Once upon a time"]


def test_format_without_a_fillable_key_set_is_refused():
    with pytest.raises(LoratuneError, match="no key set with one prompt key"):
        format_go_template({"instruction,input,output": "%instruction% %input% %output%"}, "format 'x'")


def test_base_gguf_file_is_the_runs_gguf_source(tmp_path):
    from loratune.models.sources import default_gguf

    run = tmp_path / "run"
    run.mkdir()
    (run / "loratune.yaml").write_text("model:\n  source: default\n")
    assert base_gguf_file(run, Workspace.resolve(tmp_path)) == default_gguf()
    gguf = tmp_path / "My.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    (run / "loratune.yaml").write_text(f"model:\n  source: {gguf}\n")
    assert base_gguf_file(run, Workspace.resolve(tmp_path)) == gguf
    (run / "loratune.yaml").write_text("model:\n  source: /some/hf-folder\n")
    assert base_gguf_file(run, Workspace.resolve(tmp_path)) is None


# ---- the CLI on tiny trained runs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("ollama")
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {i}", "output": f"Arr {i}"}) + "\n" for i in range(8)))
    for name, fmt in (("chatty", "auto"), ("alpacas", "alpaca")):
        config = RunConfig(
            name=name,
            model=ModelSpec(source=str(tiny_model)),
            adapter=AdapterSpec(rank=4, alpha=8, dropout=0.0, targets="q_proj,v_proj"),
            data=DataSpec(path=str(data), format=fmt),
            train=TrainSpec(max_steps=1, batch_size=8, micro_batch=8, lr=1e-2, save_every=0),
        )
        train(config, home=root / "home", show_progress=False)
    return root / "home"


def export_cli(home, name):
    done = subprocess.run(
        [sys.executable, "-m", "loratune.cli", "--home", str(home), "loras", "export", name, "--format", "ollama"],
        capture_output=True,
        text=True,
    )
    return done


def export_in_process(home, name, capsys):
    """The same command through loratune.cli.main (one subprocess per test file is enough to prove the real CLI)."""
    code = main(["--home", str(home), "loras", "export", name, "--format", "ollama"])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exports_a_chat_run(trained_home, tiny_model, tokenizer, ollama_render):
    done = export_cli(trained_home, "chatty")
    assert done.returncode == 0, done.stderr
    folder = trained_home / "loras" / "chatty" / "ollama"
    assert f"ollama create chatty -f {folder / 'Modelfile'}" in done.stdout
    assert "convert_hf_to_gguf.py" in done.stdout  # the tiny base is a transformers folder, not a GGUF
    reader = GGUFReader(folder / "adapter.gguf")
    assert bytes(reader.fields["general.type"].parts[-1]).decode() == "adapter"
    lines = (folder / "Modelfile").read_text().splitlines()
    assert "FROM ./base.gguf" in lines and "ADAPTER ./adapter.gguf" in lines
    assert any(line.startswith("#   python convert_hf_to_gguf.py") and str(tiny_model) in line for line in lines)
    assert 'PARAMETER stop "<|im_end|>"' in lines and not any(line.startswith("SYSTEM") for line in lines)
    result = ollama_render(folder / "Modelfile", CONVERSATIONS)
    assert dict(result["commands"])["stop"] == "<|im_end|>"
    for conversation, rendered in zip(CONVERSATIONS, result["renders"], strict=True):
        assert rendered == jinja(tokenizer, CHATML, conversation, None)


def test_cli_exports_a_format_run_and_follows_prompt_json(trained_home, ollama_render, capsys):
    from loratune.data.instructions import load_format

    code, _, err = export_in_process(trained_home, "alpacas", capsys)
    assert code == 0, err
    modelfile = trained_home / "loras" / "alpacas" / "ollama" / "Modelfile"
    rendered = ollama_render(modelfile, [[msg("user", "Name a sea.")]])["renders"][0]
    alpaca = load_format("alpaca", Workspace.resolve(trained_home))
    assert rendered == format_segments({"instruction": "Name a sea.", "output": "x"}, alpaca, "test")[0][0]
    assert rendered.endswith("### Instruction:\nName a sea.\n\n### Response:\n")

    # A run whose prompt.json says otherwise (a system prompt, one more stop string) is exported by it.
    contract = {
        "kind": "format",
        "chat_template": None,
        "format": {
            "system,instruction,output": "[%system%] %instruction% => %output%",
            "instruction,output": "%instruction% => %output%",
        },
        "format_name": "mine",
        "system": "Talk like a pirate.",
        "add_bos": False,
        "eos_token": "<|im_end|>",
        "eos_token_id": 3,
        "stop": ["<|im_end|>", "\n=>"],
        "stop_token_ids": [3],
    }
    (trained_home / "loras" / "alpacas" / "prompt.json").write_text(json.dumps(contract))
    try:
        code, _, err = export_in_process(trained_home, "alpacas", capsys)
        assert code == 0, err
        result = ollama_render(modelfile, [[msg("user", "Hi")], [msg("system", "Be kind."), msg("user", "Hi")]])
        assert result["renders"] == ["[Talk like a pirate.] Hi => ", "[Be kind.] Hi => "]
        commands = result["commands"]
        assert ["system", "Talk like a pirate."] in commands
        assert [c[1] for c in commands if c[0] == "stop"] == ["<|im_end|>", "\n=>"]
    finally:
        (trained_home / "loras" / "alpacas" / "prompt.json").unlink()


def test_cli_refuses_a_broken_prompt_json_in_one_line(trained_home, capsys):
    path = trained_home / "loras" / "chatty" / "prompt.json"
    path.write_text("{not json")
    try:
        code, _, err = export_in_process(trained_home, "chatty", capsys)
    finally:
        path.unlink()
    assert code == 1 and "prompt.json: not valid JSON" in err
    assert len(err.strip().splitlines()) == 1
