"""RunConfig: defaults, YAML round trip, coercion, helpful errors, validation; workspace names and paths."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from loratune.config import (
    DataSpec,
    RunConfig,
    TrainSpec,
    coerce,
    field_help,
    from_dict,
    load_yaml,
    save_yaml,
    set_dotted,
    to_dict,
)
from loratune.errors import LoratuneError
from loratune.workspace import Workspace, check_name, inside

# ---------------------------------------------------------------- defaults


def test_defaults():
    cfg = RunConfig()
    assert cfg.adapter.rank == 32
    assert cfg.adapter.alpha == 64
    assert cfg.adapter.dropout == 0.05
    assert cfg.train.lr == 3e-4
    assert cfg.data.cutoff == 256
    assert cfg.train.epochs == 3
    assert cfg.data.hard_cut == "\n\n\n"
    assert cfg.model.source == "default"
    assert cfg.validate() is cfg


def test_nested_defaults_are_not_shared_between_instances():
    a, b = RunConfig(), RunConfig()
    a.train.lr = 1.0
    assert b.train.lr == 3e-4


# ---------------------------------------------------------------- YAML round trip


def test_yaml_round_trip(tmp_path):
    cfg = RunConfig(name="pirate")
    cfg.adapter.rank = 8
    cfg.adapter.targets = "q_proj,v_proj"
    cfg.train.lr = 1e-5  # dumped as '1.0e-05': must come back as a float
    cfg.train.scheduler = "cosine"
    cfg.train.epochs = 0.5
    cfg.train.resume = True
    cfg.data.path = "data/train.jsonl"
    cfg.data.hard_cut = "\n---\n"
    cfg.data.add_eos = False
    path = tmp_path / "loratune.yaml"
    save_yaml(cfg, path)
    loaded = from_dict(RunConfig, load_yaml(path))
    assert loaded == cfg
    assert isinstance(loaded.train.lr, float)
    assert to_dict(loaded) == to_dict(cfg)


def test_yaml_round_trip_of_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    save_yaml(RunConfig(), path)
    assert from_dict(RunConfig, load_yaml(path)) == RunConfig()


def test_from_dict_partial_and_empty_group():
    cfg = from_dict(RunConfig, {"train": None, "adapter": {"rank": "16"}})
    assert cfg.train == TrainSpec()
    assert cfg.adapter.rank == 16
    assert cfg.adapter.alpha == 64


def test_load_yaml_errors(tmp_path):
    with pytest.raises(LoratuneError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(LoratuneError, match="mapping"):
        load_yaml(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n", encoding="utf-8")
    with pytest.raises(LoratuneError, match="not valid YAML"):
        load_yaml(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert load_yaml(empty) == {}


def test_from_dict_group_must_be_a_mapping():
    with pytest.raises(LoratuneError, match="train"):
        from_dict(RunConfig, {"train": 5})


# ---------------------------------------------------------------- coerce


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2e-4", 0.0002), ("0.5", 0.5), (3, 3.0), ("1", 1.0), (2.5, 2.5)],
)
def test_coerce_float(value, expected):
    result = coerce(value, float, "train.lr")
    assert result == pytest.approx(expected)
    assert isinstance(result, float)


@pytest.mark.parametrize(("value", "expected"), [("16", 16), (8, 8), (4.0, 4), ("-1", -1)])
def test_coerce_int(value, expected):
    result = coerce(value, int, "adapter.rank")
    assert result == expected
    assert isinstance(result, int) and not isinstance(result, bool)


@pytest.mark.parametrize("value", [2.5, True, "abc", "2.5", None, [1]])
def test_coerce_int_refuses(value):
    with pytest.raises(LoratuneError, match=r"'adapter\.rank' expects a whole number"):
        coerce(value, int, "adapter.rank")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("no", False),
        ("YES", True),
        ("off", False),
        ("1", True),
        ("0", False),
        (True, True),
        (False, False),
    ],
)
def test_coerce_bool(value, expected):
    assert coerce(value, bool, "train.resume") is expected


@pytest.mark.parametrize("value", ["maybe", 1, 0, None, ""])
def test_coerce_bool_refuses(value):
    with pytest.raises(LoratuneError, match=r"'train\.resume' expects true or false"):
        coerce(value, bool, "train.resume")


def test_coerce_float_refuses_bool_and_text():
    with pytest.raises(LoratuneError, match="expects a number"):
        coerce(True, float, "train.lr")
    with pytest.raises(LoratuneError, match="expects a number"):
        coerce("fast", float, "train.lr")


def test_coerce_str():
    assert coerce(None, str, "name") == ""
    assert coerce(12, str, "name") == "12"
    assert coerce("x", str, "name") == "x"


def test_coerce_literal():
    kind = Literal["linear", "cosine", "constant"]
    assert coerce("cosine", kind, "train.scheduler") == "cosine"
    with pytest.raises(LoratuneError) as info:
        coerce("step", kind, "train.scheduler")
    message = str(info.value)
    assert "train.scheduler" in message
    assert "linear, cosine, constant" in message
    assert "'step'" in message


def test_coerce_optional():
    assert coerce(None, int | None, "x") is None
    assert coerce("3", int | None, "x") == 3


def test_from_dict_coerces_strings_like_the_command_line():
    cfg = from_dict(
        RunConfig,
        {
            "train": {"lr": "2e-4", "batch_size": "8", "resume": "true", "scheduler": "constant"},
            "data": {"add_eos": "no"},
        },
    )
    assert cfg.train.lr == pytest.approx(0.0002)
    assert cfg.train.batch_size == 8
    assert cfg.train.resume is True
    assert cfg.train.scheduler == "constant"
    assert cfg.data.add_eos is False


# ---------------------------------------------------------------- error messages


def test_unknown_key_suggests_close_name():
    with pytest.raises(LoratuneError) as info:
        from_dict(RunConfig, {"train": {"lrr": 1e-4}})
    message = str(info.value)
    assert "'train.lrr'" in message
    assert "did you mean 'lr'" in message


def test_unknown_top_level_key_suggests_close_name():
    with pytest.raises(LoratuneError, match="did you mean 'adapter'"):
        from_dict(RunConfig, {"adaptr": {"rank": 4}})


def test_unknown_key_without_close_match_lists_known_options():
    with pytest.raises(LoratuneError) as info:
        from_dict(RunConfig, {"data": {"zzzzzz": 1}})
    message = str(info.value)
    assert "data.zzzzzz" in message
    assert "known:" in message
    assert "cutoff" in message and "hard_cut" in message


def test_bad_value_names_the_option():
    with pytest.raises(LoratuneError) as info:
        from_dict(RunConfig, {"train": {"lr": "abc"}})
    message = str(info.value)
    assert "'train.lr'" in message
    assert "'abc'" in message
    assert "a number" in message


def test_bad_literal_in_config_names_the_option():
    with pytest.raises(LoratuneError, match=r"train\.scheduler.*linear, cosine, constant"):
        from_dict(RunConfig, {"train": {"scheduler": "exponential"}})


# ---------------------------------------------------------------- validate


def _cfg(**groups) -> RunConfig:
    return from_dict(RunConfig, groups)


def test_validate_overlap_must_not_be_negative():
    # overlap >= cutoff only matters for raw text, so raw_text.build refuses it (see test_raw_text)
    with pytest.raises(LoratuneError, match="overlap"):
        _cfg(data={"cutoff": 64, "overlap": -1}).validate()
    assert _cfg(data={"cutoff": 64, "overlap": 63}).validate().data.overlap == 63
    assert _cfg(data={"cutoff": 64, "overlap": 100}).validate().data.overlap == 100
    assert _cfg(data={"cutoff": 64, "overlap": 0}).validate().data.overlap == 0


@pytest.mark.parametrize(("batch", "micro"), [(10, 4), (2, 4), (17, 4), (0, 4)])
def test_validate_batch_size_multiple_of_micro_batch(batch, micro):
    with pytest.raises(LoratuneError, match="multiple of train.micro_batch"):
        _cfg(train={"batch_size": batch, "micro_batch": micro}).validate()


@pytest.mark.parametrize(("batch", "micro"), [(16, 4), (4, 4), (12, 3), (1, 1)])
def test_validate_accepts_multiples(batch, micro):
    cfg = _cfg(train={"batch_size": batch, "micro_batch": micro})
    assert cfg.validate() is cfg


@pytest.mark.parametrize(
    ("groups", "fragment"),
    [
        ({"adapter": {"rank": 0}}, "adapter.rank"),
        ({"adapter": {"dropout": 1.0}}, "adapter.dropout"),
        ({"data": {"cutoff": 4, "overlap": 0}}, "data.cutoff"),
        ({"train": {"lr": 0}}, "train.lr"),
        ({"train": {"epochs": 0, "max_steps": 0}}, "train.epochs"),
        ({"train": {"warmup_ratio": 1.0}}, "train.warmup_ratio"),
    ],
)
def test_validate_other_checks(groups, fragment):
    with pytest.raises(LoratuneError, match=fragment.replace(".", r"\.")):
        _cfg(**groups).validate()


def test_validate_micro_batch_zero_is_a_user_error():
    with pytest.raises(LoratuneError, match=r"train\.micro_batch must be > 0"):
        _cfg(train={"micro_batch": 0}).validate()


def test_validate_max_steps_instead_of_epochs():
    cfg = _cfg(train={"epochs": 0, "max_steps": 10})
    assert cfg.validate() is cfg


# ---------------------------------------------------------------- set_dotted / field_help


def test_set_dotted_creates_levels_and_feeds_from_dict():
    data: dict = {}
    set_dotted(data, "train.lr", "2e-4")
    set_dotted(data, "train.epochs", "1")
    set_dotted(data, "name", "my-lora")
    set_dotted(data, "data.path", "x.txt")
    assert data == {"train": {"lr": "2e-4", "epochs": "1"}, "name": "my-lora", "data": {"path": "x.txt"}}
    cfg = from_dict(RunConfig, data)
    assert cfg.train.lr == pytest.approx(2e-4)
    assert cfg.train.epochs == 1.0
    assert cfg.name == "my-lora"


def test_set_dotted_overrides_existing_value():
    data = {"train": {"lr": 0.1, "seed": 1}}
    set_dotted(data, "train.lr", 0.2)
    assert data == {"train": {"lr": 0.2, "seed": 1}}


def test_set_dotted_refuses_a_leaf_used_as_group():
    data = {"train": 5}
    with pytest.raises(LoratuneError, match="'train' is not a group"):
        set_dotted(data, "train.lr", 1)


def test_field_help_lists_every_leaf_with_help():
    rows = field_help()
    by_name = {name: (default, text) for name, default, text in rows}
    assert by_name["train.lr"] == (3e-4, "Peak learning rate.")
    assert by_name["adapter.rank"][0] == 32
    assert by_name["adapter.rank"][1].startswith("LoRA rank r")
    assert by_name["data.hard_cut"] == ("\n\n\n", "Raw text: no chunk crosses this string.")
    assert all(text for _, _, text in rows), "every option has a one-line help"
    assert by_name["name"][1].startswith("Adapter name")
    # one row per leaf field, dotted, in declaration order
    expected = ["name"] + [
        f"{group}.{f.name}"
        for group in ("model", "adapter", "data", "train")
        for f in dataclasses.fields(type(getattr(RunConfig(), group)))
    ]
    assert [name for name, _, _ in rows] == expected


def test_field_help_of_a_group_with_prefix():
    rows = field_help(DataSpec, "data.")
    assert rows[0][0] == "data.path"
    assert (
        "data.cutoff",
        256,
        "Maximum tokens per sample. Longer instruction samples are dropped (and counted).",
    ) in rows


# ---------------------------------------------------------------- workspace names and paths


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".", "..", ".hidden", "a b", "x" * 101, "a\\b", "-lead"])
def test_check_name_refuses(name):
    with pytest.raises(LoratuneError, match="invalid adapter name"):
        check_name(name, "adapter name")


@pytest.mark.parametrize("name", ["my-lora_1.v2", "a", "A9", "x" * 100])
def test_check_name_accepts(name):
    assert check_name(name) == name


def test_workspace_folders(home):
    ws = Workspace.resolve(home)
    assert ws.home == home.resolve()
    assert ws.loras == ws.home / "loras"
    assert ws.formats == ws.home / "formats"
    assert ws.datasets == ws.home / "datasets"
    assert ws.models == ws.home / "models"
    assert ws.lora_dir("my-lora_1.v2") == ws.home / "loras" / "my-lora_1.v2"
    with pytest.raises(LoratuneError, match="invalid adapter name"):
        ws.lora_dir("../escape")


def test_inside_accepts_paths_within(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    assert inside(folder, "x.json") == (folder / "x.json").resolve()
    assert inside(folder, "sub/../y") == (folder / "y").resolve()
    assert inside(folder, ".") == folder.resolve()


@pytest.mark.parametrize("relative", ["../x", "../../etc/passwd", "sub/../../x", "/etc/passwd"])
def test_inside_refuses_escaping_paths(tmp_path, relative):
    folder = tmp_path / "f"
    folder.mkdir()
    with pytest.raises(LoratuneError, match="points outside"):
        inside(folder, relative)


def test_inside_refuses_symlink_out(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(LoratuneError, match="points outside"):
        inside(folder, "link/secret.json")


@pytest.mark.parametrize("name", ["abc\n", "a\nb", "CON", "con.txt", "NUL", "com1", "LPT9.log", "aux", "a.", "x.."])
def test_check_name_refuses_newlines_device_names_and_a_final_dot(name):
    with pytest.raises(LoratuneError, match="invalid adapter name"):
        check_name(name, "adapter name")


@pytest.mark.parametrize("name", ["a..b", "checkpoint-000001", "console", "con-x", "COM10", "nul_set", "v1.2"])
def test_check_name_accepts_names_that_only_look_odd(name):
    """'..' inside a name is no path step; a run named like a checkpoint cannot collide with its own checkpoints."""
    assert check_name(name, "adapter name") == name


@pytest.mark.parametrize(
    "train, fragment",
    [
        ({"epochs": float("inf")}, "option 'train.epochs' must be a finite number; got inf"),
        ({"epochs": 1e308}, "train.epochs must be at most"),
        ({"seed": 2**32}, "train.seed must be a whole number from 0 to 4294967295"),
        ({"lr_power": 0.0}, "train.lr_power must be > 0"),
        ({"weight_decay": float("nan")}, "option 'train.weight_decay' must be a finite number; got nan"),
        ({"weight_decay": 5000.0, "lr": 2e-4}, "train.weight_decay 5000 x train.lr 0.0002 must be below 1"),
    ],
)
def test_validate_refuses_non_finite_and_out_of_range_numbers(train, fragment):
    with pytest.raises(LoratuneError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        RunConfig(train=TrainSpec(**train)).validate()


def test_validate_accepts_the_edges():
    RunConfig(train=TrainSpec(seed=2**32 - 1, epochs=1_000_000, weight_decay=0.1, lr_power=0.5)).validate()


def test_what_a_resume_may_change_names_real_options():
    """A typo in the list would let nothing through under that name and refuse the real one: check every entry."""
    from loratune.training.resume import RESUME_MAY_CHANGE

    assert RESUME_MAY_CHANGE <= {name for name, _, _ in field_help()}
    assert not RESUME_MAY_CHANGE & {"train.lr", "train.seed", "adapter.rank", "data.path", "model.source"}


# ---------------------------------------------------------------- each group's checks, through the real CLI


def _cli_error(capsys, *argv: str) -> str:
    """Run `loratune ...` in-process; it must fail with exactly one 'loratune: error:' line and exit 1."""
    from loratune.cli import main

    assert main(list(argv)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("loratune: error: ") and "\n" not in err, err
    return err.removeprefix("loratune: error: ")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--train.eval_every", "-1"], "train.eval_every must be >= 0 (0: evaluate only at the end)"),
        (["--train.packed_tokens", "-1"], "train.packed_tokens must be >= 0 (0: micro_batch x cutoff)"),
        (
            ["--train.packed_tokens", "100", "--data.cutoff", "128"],
            "train.packed_tokens 100 must be 0 (micro_batch x cutoff) or at least data.cutoff (128), "
            "so a packed pass holds the longest sample",
        ),
        (["--train.lr_power", "0"], "train.lr_power must be > 0 (the polynomial decay's power; 1.0 is linear)"),
        (["--train.max_grad_norm", "-1"], "train.max_grad_norm must be >= 0 (0: no clipping)"),
        (["--model.quant", "3bit"], "option 'model.quant' must be one of none, 4bit, 8bit; got '3bit'"),
    ],
)
def test_train_refuses_a_bad_option_before_loading_a_model(options, message, tmp_path, capsys):
    # The model and data do not exist: an error about the option shows it came before anything was loaded.
    home = tmp_path / "home"
    argv = ["--home", str(home), "train", "--model", str(tmp_path / "no-model"), "--data", "no.jsonl", "--name", "r"]
    assert _cli_error(capsys, *argv, *options) == message
    assert not (home / "loras").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--max-new-tokens", "0"], "max_new_tokens must be at least 1"),
        (["--temperature", "-0.5"], "temperature must be >= 0 (0: greedy)"),
        (["--temperature", "inf"], "option 'temperature' must be a finite number; got inf"),
        (["--top-p", "0"], "top_p must be in (0, 1] (1: off)"),
        (["--top-p", "1.5"], "top_p must be in (0, 1] (1: off)"),
        (["--top-k", "-1"], "top_k must be >= 0 (0: off)"),
        (["--repetition-penalty", "0"], "repetition_penalty must be > 0 (1.0: off)"),
        (["--seed", "-2"], "seed must be -1 (not seeded) or a whole number from 0 to 4294967295"),
        (["--seed", str(2**64)], "seed must be -1 (not seeded) or a whole number from 0 to 4294967295"),
    ],
)
@pytest.mark.parametrize("command", [["generate", "--prompt", "Hi"], ["chat"]])
def test_generate_and_chat_refuse_a_bad_option_before_loading_a_model(command, options, message, tmp_path, capsys):
    argv = ["--home", str(tmp_path), *command, "--model", str(tmp_path / "no-model"), *options]
    assert _cli_error(capsys, *argv) == message


def test_a_generate_spec_built_in_python_is_checked_too():
    from loratune.config import GenerateSpec

    assert GenerateSpec(temperature=0.7, top_p=1.0, top_k=0, seed=-1).validate().top_p == 1.0  # the edges pass
    with pytest.raises(LoratuneError, match=r"^top_k must be >= 0 \(0: off\)$"):
        GenerateSpec(top_k=-3).validate()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--rank", "0"], "adapter.rank must be > 0"),
        (["--targets", ","], "adapter.targets is empty: use attention+mlp, attention, all-linear or module names"),
        (["--cutoff", "4"], "data.cutoff must be at least 8 tokens"),
        (["--micro-batch", "0"], "train.micro_batch must be > 0"),
    ],
)
def test_estimate_refuses_what_train_refuses(options, message, tmp_path, capsys):
    """`loratune estimate` (and the UI's Model tab, which calls the same check) takes train's checks."""
    argv = ["--home", str(tmp_path), "estimate", "--model", str(tmp_path / "no-model"), *options]
    assert _cli_error(capsys, *argv).startswith(message)


def test_quant_load_refuses_an_unknown_quant_before_the_device_check():
    from loratune.models.quant import check_quant

    with pytest.raises(LoratuneError, match=r"^option 'model\.quant' must be one of none, 4bit, 8bit; got '3bit'$"):
        check_quant("3bit", "cpu")
