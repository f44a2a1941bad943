"""Model sources: local folders, names in models/, unfinished hub downloads, targets per architecture."""

import shutil

import pytest
from transformers import AutoModelForCausalLM

from loratune import LoratuneError
from loratune.models import resolve_model_path, resolve_targets
from loratune.models.sources import _PARTIAL
from loratune.workspace import Workspace


def test_local_folder_is_used_as_is(tiny_model, home):
    assert resolve_model_path(str(tiny_model), Workspace.resolve(home)) == tiny_model.resolve()


def test_folder_without_config_is_refused(tmp_path, home):
    with pytest.raises(LoratuneError, match="no config.json"):
        resolve_model_path(str(tmp_path), Workspace.resolve(home))


def test_name_in_models_folder_and_hub_id_mapping(tiny_model, home):
    ws = Workspace.resolve(home)
    shutil.copytree(tiny_model, ws.models / "org_tiny")
    assert resolve_model_path("org/tiny", ws) == ws.models / "org_tiny"  # a hub id finds its earlier download
    assert resolve_model_path("org_tiny", ws) == ws.models / "org_tiny"


def test_unfinished_download_is_not_used(tiny_model, home):
    ws = Workspace.resolve(home)
    shutil.copytree(tiny_model, ws.models / "org_tiny")
    (ws.models / "org_tiny" / _PARTIAL).write_text("downloading")
    with pytest.raises(LoratuneError, match="could not download model 'org/tiny'"):  # resumes, offline here
        resolve_model_path("org/tiny", ws)


def test_missing_relative_folder_is_not_sent_to_the_hub(home):
    with pytest.raises(LoratuneError, match="model folder not found"):
        resolve_model_path("./nowhere/model", Workspace.resolve(home))


def test_attention_preset_and_explicit_targets(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert resolve_targets(model, "attention") == ["q_proj", "v_proj"]
    assert resolve_targets(model, "attention+mlp") == ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
    assert resolve_targets(model, "all-linear") == "all-linear"
    assert resolve_targets(model, "k_proj, o_proj") == ["k_proj", "o_proj"]
    with pytest.raises(LoratuneError, match="its linear modules are: q_proj, k_proj, v_proj, o_proj"):
        resolve_targets(model, "c_attn")
