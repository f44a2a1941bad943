"""What the LoRAs tab offers for download, and the copies Gradio serves.

For the chosen adapter (a name or 'name/checkpoint-N' in loras/) the server lists, from its own disk: the adapter
itself (weights, config, prompt contract and tokenizer files), the GGUF files its exports wrote into its folder
(`loras export`: adapter.gguf, model-<quant>.gguf), its Ollama folders (a folder holding a Modelfile) and the merged
models in models/ whose MERGED_FROM.txt names it. The browser sends back the key of one entry of that list, never a
path: a key that is not in the list is refused.

Nothing in the workspace is served directly (the UI launches without `allowed_paths`, so a request for a workspace
path is refused). A download is staged in Gradio's upload folder, which it serves: a file as a hard link (no copy;
our writers replace files by rename, so the link keeps the bytes it was made with), a folder as a zip built there.
Both are written under a hidden temporary name and renamed into place, so a half-written zip is never offered and the
run folder is never written. A staged copy is reused while its sources are unchanged (same sizes, times, inodes); a
newer one replaces it, and copies older than a day are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from loratune.adapters import adapter_path
from loratune.adapters.files import clean_stale, temporary
from loratune.adapters.merge import merged_folders
from loratune.errors import LoratuneError
from loratune.rundir import ADAPTER_FILES, CARD, CONTRACT_FILE
from loratune.workspace import Workspace, inside

# Tokenizer files an adapter saved by peft alone may carry (a run's prompt.json lists its own).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
STORED = (".safetensors", ".gguf", ".bin")  # weights barely compress: stored, so a zip costs one pass over the bytes
STAGE_FOLDER = "loratune-downloads"
KEEP_S = 24 * 3600
_staging = threading.Lock()  # Gradio runs handlers in threads; one stage at a time keeps the temporaries apart


@dataclass(frozen=True)
class Export:
    key: str  # what the browser sends back: 'adapter', 'gguf:<file>', 'ollama:<folder>', 'merged:<model>'
    label: str
    source: Path  # the file, or the folder whose `members` are zipped
    filename: str  # the name the browser saves it under
    members: tuple[str, ...] = ()  # a zip's files, relative to `source`; empty for a single file


def exports(ws: Workspace, spec: str) -> list[Export]:
    """Everything downloadable for the adapter `spec`: the adapter zip first, then its exports."""
    folder = adapter_path(spec, ws)  # checks the name: it stays inside loras/
    stem = spec.replace("/", "-")
    found = [
        Export("adapter", "the adapter (zip: weights, config, tokenizer)", folder, f"{stem}.zip", _adapter(folder))
    ]
    for file in sorted(folder.glob("*.gguf")):
        if _ours(folder, file) and file.is_file():
            found.append(Export(f"gguf:{file.name}", f"{file.name} ({_gguf_kind(file.name)})", file, file.name))
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if _ours(folder, sub) and (sub / "Modelfile").is_file():
            label = f"{sub.name}/ (Ollama folder, as a zip)"
            found.append(Export(f"ollama:{sub.name}", label, sub, f"{stem}-{sub.name}.zip", _members(sub)))
    for model in (m for m in merged_folders(folder, ws) if _ours(ws.models, m)):
        label = f"models/{model.name}/ (merged model, as a zip)"
        found.append(Export(f"merged:{model.name}", label, model, f"{model.name}.zip", _members(model)))
    return found


def find(ws: Workspace, spec: str | None, key: str | None) -> Export:
    """The entry `key` of `spec`'s list, looked up again on the server (what changed since the page listed it
    counts)."""
    if not spec:
        raise LoratuneError("choose an adapter or checkpoint first")
    for export in exports(ws, spec):
        if export.key == key:
            return export
    raise LoratuneError(f"{spec} has no export {key!r} (any more); press ↻ Refresh")


def stage(export: Export, root: Path) -> Path:
    """A complete copy of `export` under `root` (Gradio's upload folder) to hand to a DownloadButton; reused while
    its sources are unchanged."""
    staged = root / STAGE_FOLDER
    place = staged / _digest(str(export.source.resolve()))
    with _staging:
        staged.mkdir(mode=0o700, parents=True, exist_ok=True)  # the upload folder is shared: ours is for us alone
        _prune(staged)
        try:
            before = _fingerprint(export)
        except FileNotFoundError:
            raise LoratuneError(f"{export.source} changed since it was listed; press ↻ Refresh") from None
        version = place / _digest(json.dumps(before))
        target = version / export.filename
        if target.is_file():
            os.utime(target)  # in use again: not pruned tomorrow
            return target
        version.mkdir(parents=True, exist_ok=True)
        clean_stale(version)  # what a killed UI left half-written
        tmp = temporary(target, "tmp")
        try:
            _write(export, tmp)
            if _fingerprint(export) != before:  # replaced while read (a merge or a save): maybe a mix of both
                raise FileNotFoundError
            os.replace(tmp, target)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise LoratuneError(f"{export.source} changed while it was packed; try again") from None
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk leaves nothing half-written behind
            raise
        for older in place.iterdir():  # the copies of earlier versions of the same source
            if older != version:
                shutil.rmtree(older, ignore_errors=True)
        return target


def _write(export: Export, tmp: Path) -> None:
    if not export.members:
        try:
            os.link(export.source, tmp)
        except OSError:  # another disk, or links not allowed: a copy
            shutil.copyfile(export.source, tmp)
        return
    top = Path(export.filename).stem
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for member in export.members:
            kind = zipfile.ZIP_STORED if member.endswith(STORED) else zipfile.ZIP_DEFLATED
            archive.write(export.source / member, f"{top}/{member}", compress_type=kind)


def _adapter(folder: Path) -> tuple[str, ...]:
    """The adapter's own files: weights, config, prompt contract, tokenizer files and model card."""
    try:
        listed = json.loads((folder / CONTRACT_FILE).read_text(encoding="utf-8")).get("tokenizer_files") or []
    except (OSError, ValueError):
        listed = []
    names = [*ADAPTER_FILES, CONTRACT_FILE, *[n for n in listed if isinstance(n, str)], *TOKENIZER_FILES, CARD]
    return tuple(
        n for n in dict.fromkeys(names) if "/" not in n and _ours(folder, folder / n) and (folder / n).is_file()
    )


def _members(folder: Path) -> tuple[str, ...]:
    """Every file under `folder`, hidden ones (temporaries) left out, none reached through a link out of it."""
    found = []
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not file.is_file() or not _ours(folder, file):
            continue
        found.append(relative.as_posix())
    return tuple(found)


def _ours(folder: Path, path: Path) -> bool:
    """Not hidden, and inside `folder` once links are followed."""
    if path.name.startswith("."):
        return False
    try:
        inside(folder, str(path.relative_to(folder)))
    except LoratuneError:
        return False
    return True


def _gguf_kind(name: str) -> str:
    if name.startswith("model-"):
        return "merged GGUF model for llama.cpp -m"
    if name.startswith("adapter"):
        return "GGUF adapter for llama.cpp --lora"
    return "GGUF file"


def _fingerprint(export: Export) -> list:
    """What a staged copy was made from: each source file's name, size, time and inode (JSON-ready)."""
    files = (
        {export.source.name: export.source} if not export.members else {m: export.source / m for m in export.members}
    )
    stats = {name: file.stat() for name, file in files.items()}
    return [export.key, export.filename, *[[n, s.st_size, s.st_mtime_ns, s.st_ino] for n, s in stats.items()]]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _prune(folder: Path) -> None:
    """Remove staged copies not handed out for a day."""
    now = time.time()
    for place in [p for p in folder.iterdir() if p.is_dir()]:
        for version in [v for v in place.iterdir() if v.is_dir()]:
            newest = max((f.stat().st_mtime for f in version.iterdir()), default=0)
            if now - newest > KEEP_S:
                shutil.rmtree(version, ignore_errors=True)
        if not any(place.iterdir()):
            place.rmdir()
