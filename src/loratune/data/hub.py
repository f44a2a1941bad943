"""Hub datasets: `hf:org/name` (or a bare `org/name` that is no local path), downloaded once into datasets/hub/.

The hub client (`snapshot_download` of the dataset repo) keeps its own cache layout there
(`datasets--org--name/snapshots/<commit>/`); a later run, a resume and `data check` find the snapshot without the
network. The snapshot's files are then read with the same readers as local files: `data.subset` and `data.split` pick
them as the hub does (the dataset card's `configs:`, else folders named after the subset and file names holding the
split, e.g. `data/train-00000-of-00001.parquet`, `test.jsonl`).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from loratune.data.files import KINDS, kind_of
from loratune.errors import LoratuneError
from loratune.workspace import Workspace

PREFIX = "hf:"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_PARTIAL = ".loratune-downloading"  # in the repo's cache folder while a download is unfinished
SPLIT_WORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}


def hub_id(given: str, ws: Workspace) -> str | None:
    """The dataset id `given` names on the hub, or None when it is a local path (existing or not)."""
    if given.startswith(PREFIX):
        repo_id = given[len(PREFIX) :]
        if not _ID.match(repo_id):
            raise LoratuneError(f"data.path {given!r}: a hub dataset is hf:<org>/<name>")
        return repo_id
    path = Path(given).expanduser()
    if path.exists() or (not path.is_absolute() and (ws.datasets / given).exists()):
        return None
    if _ID.match(given) and Path(given).suffix.lower() not in KINDS:
        return given
    return None


def download(repo_id: str, ws: Workspace, revision: str = "") -> Path:
    """The local snapshot of a hub dataset repo: downloaded (with the hub client's progress bar) the first time."""
    from huggingface_hub import constants, snapshot_download

    cache = ws.datasets / "hub"
    partial = cache / f"datasets--{repo_id.replace('/', '--')}" / _PARTIAL
    try:
        local = Path(
            snapshot_download(
                repo_id, repo_type="dataset", revision=revision or None, cache_dir=cache, local_files_only=True
            )
        )
        if not partial.exists():
            return local
    except Exception:
        pass
    if constants.HF_HUB_OFFLINE:
        raise LoratuneError(
            f"could not download dataset '{repo_id}': HF_HUB_OFFLINE is set and it is not in {cache} yet; "
            "unset it, or pass a local file or folder"
        )
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(f"downloading {repo_id}; run again to resume\n")
        patterns = [f"*{suffix}" for suffix in KINDS if suffix != ".md"] + ["README.md"]
        local = Path(
            snapshot_download(
                repo_id, repo_type="dataset", revision=revision or None, cache_dir=cache, allow_patterns=patterns
            )
        )
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LoratuneError(
            f"could not download dataset '{repo_id}' from the Hugging Face hub ({type(e).__name__}: {reason[:160]}); "
            "check the id (and data.revision) and your connection, or pass a local file or folder"
        ) from None
    partial.unlink()
    return local


def is_snapshot(path: Path) -> bool:
    """A folder the hub client made: <cache>/datasets--org--name/snapshots/<commit>."""
    return path.is_dir() and path.parent.name == "snapshots" and path.parent.parent.name.startswith("datasets--")


def repo_of(snapshot: Path) -> str:
    return snapshot.parent.parent.name.removeprefix("datasets--").replace("--", "/", 1)


def select_files(snapshot: Path, subset: str, split: str) -> list[Path]:
    """The data files of one subset and split of a snapshot, as the hub's dataset viewer would pick them."""
    repo, split = repo_of(snapshot), split or "train"
    configs = card_configs(snapshot / "README.md")
    if configs:
        by_split = config_files(configs, subset, repo)
        if split not in by_split:
            raise LoratuneError(f"hub dataset '{repo}': no split '{split}'; it has: {', '.join(by_split)}")
        files = {f for pattern in by_split[split] for f in snapshot.glob(pattern) if f.is_file() and kind_of(f)}
    else:
        root = snapshot / subset if subset else snapshot
        if subset and not root.is_dir():
            subsets = sorted(p.name for p in snapshot.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise LoratuneError(f"hub dataset '{repo}': no subset '{subset}'; it has: {', '.join(subsets) or 'none'}")
        files = set(split_files(root, split, repo))
    files = sorted(f for f in files if f.suffix.lower() != ".md")
    if not files:
        raise LoratuneError(f"hub dataset '{repo}': no data files for split '{split}'")
    return files


def card_configs(readme: Path) -> list[dict]:
    """The `configs:` list of a dataset card's YAML header ([] when it has none)."""
    if not readme.is_file():
        return []
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return []
    header = text[3:].split("\n---", 1)[0]
    try:
        meta = yaml.safe_load(header) or {}
    except yaml.YAMLError:
        return []
    configs = meta.get("configs") if isinstance(meta, dict) else None
    return [c for c in configs if isinstance(c, dict)] if isinstance(configs, list) else []


def config_files(configs: list[dict], subset: str, repo: str) -> dict[str, list[str]]:
    """{split: file patterns} of the chosen config (data.subset, else the card's default, else the only one)."""
    names = [str(c.get("config_name", "default")) for c in configs]
    if subset:
        if subset not in names:
            raise LoratuneError(f"hub dataset '{repo}': no subset '{subset}'; it has: {', '.join(names)}")
        config = configs[names.index(subset)]
    else:
        chosen = [c for c in configs if c.get("default")] or (configs if len(configs) == 1 else [])
        chosen = chosen or [c for c, n in zip(configs, names, strict=True) if n == "default"]
        if not chosen:
            raise LoratuneError(f"hub dataset '{repo}' has subsets {', '.join(names)}; choose one with data.subset")
        config = chosen[0]
    data_files = config.get("data_files", [])
    if isinstance(data_files, str):
        return {"train": [data_files]}
    by_split: dict[str, list[str]] = {}
    for entry in data_files if isinstance(data_files, list) else []:
        if isinstance(entry, str):
            by_split.setdefault("train", []).append(entry)
        elif isinstance(entry, dict):
            paths = entry.get("path", [])
            by_split.setdefault(str(entry.get("split", "train")), []).extend(
                [paths] if isinstance(paths, str) else paths
            )
    return by_split


def split_files(root: Path, split: str, repo: str) -> list[Path]:
    """Files whose path names the split (a word of it: train, train-00000-of-00001, data/train/...); when no file
    names any split, all of them are the train split."""
    files = [f for f in root.rglob("*") if f.is_file() and kind_of(f) and not _hidden(f.relative_to(root))]

    def names(f: Path, words: tuple[str, ...]) -> bool:
        relative = "/" + f.relative_to(root).as_posix().lower()
        return any(re.search(rf"[/_.\- ]{re.escape(w)}([/_.\- 0-9]|$)", relative) for w in words)

    words = SPLIT_WORDS.get(split, (split.lower(),))
    chosen = [f for f in files if names(f, words)]
    if chosen:
        return chosen
    if split == "train" and not any(names(f, w) for f in files for w in SPLIT_WORDS.values()):
        return files
    found = sorted(s for s, w in SPLIT_WORDS.items() if any(names(f, w) for f in files))
    raise LoratuneError(f"hub dataset '{repo}': no split '{split}'; it has: {', '.join(found) or 'train'}")


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)
