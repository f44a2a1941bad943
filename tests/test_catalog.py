"""The model catalog and `loratune models list | recommend | download`."""

import shutil

from loratune.cli import main
from loratune.models.catalog import ALL, CATALOG, recommend
from loratune.models.families import FAMILIES
from loratune.models.sources import _PARTIAL


def test_the_guide_rows_are_kept_and_each_language_gets_todays_choices():
    guide = {e.hub_id for e in CATALOG if e.guide}
    assert guide == {
        "ehartford/WizardLM-7B-Uncensored",
        "TheBloke/vicuna-7B-1.1-HF",
        "P01son/Linly-Chinese-LLaMA-7b-hf",
        "beomi/kollama-7b",
    }
    for language, guide_pick in [
        ("en", "ehartford/WizardLM-7B-Uncensored"),
        ("zh", "P01son/Linly-Chinese-LLaMA-7b-hf"),
        ("ko", "beomi/kollama-7b"),
    ]:
        ids = [e.hub_id for e in recommend(language)]
        assert guide_pick in ids
        assert any(not e.guide for e in recommend(language)), language
    assert "LGAI-EXAONE/EXAONE-4.0-1.2B" in [e.hub_id for e in recommend("ko")]
    assert "meta-llama/Llama-3.2-1B-Instruct" in [e.hub_id for e in recommend("es")]


def test_an_uncatalogued_language_gets_the_multilingual_models():
    picks = recommend("sw")
    assert picks and all(ALL in e.languages for e in picks)


def test_every_catalog_family_has_lora_presets():
    names = {f.name for f in FAMILIES.values()}
    assert {e.family for e in CATALOG} <= names
    assert all(e.hub_id.count("/") == 1 and e.licence for e in CATALOG)


def test_recommend_prints_hub_ids_and_licences(capsys):
    assert main(["models", "recommend", "--language", "zh"]) == 0
    out = capsys.readouterr().out
    assert "P01son/Linly-Chinese-LLaMA-7b-hf" in out and "Apache-2.0" in out and "[guide]" in out


def test_list_shows_family_and_size_and_unfinished_downloads(tiny_model, home, capsys):
    shutil.copytree(tiny_model, home / "models" / "tiny-llama")
    shutil.copytree(tiny_model, home / "models" / "org_half")
    (home / "models" / "org_half" / _PARTIAL).write_text("downloading")
    (home / "models" / "not-a-model").mkdir()
    assert main(["--home", str(home), "models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("org_half") and "unfinished download" in lines[0]
    assert lines[1].split()[:2] == ["tiny-llama", "LLaMA"] and lines[1].endswith("MB")


def test_list_on_an_empty_workspace_says_how_to_get_one(home, capsys):
    assert main(["--home", str(home), "models", "list"]) == 0
    assert "loratune models download" in capsys.readouterr().out


def test_download_offline_is_one_line(home, capsys):
    assert main(["--home", str(home), "models", "download", "Qwen/Qwen2.5-0.5B-Instruct"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not download model 'Qwen/Qwen2.5-0.5B-Instruct'" in err[0]


def test_download_refuses_what_is_not_a_hub_id(home, capsys):
    assert main(["--home", str(home), "models", "download", "llama"]) == 1
    assert "not a hub id" in capsys.readouterr().err
