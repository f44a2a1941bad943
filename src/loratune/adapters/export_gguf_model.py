"""Export base + adapter as one GGUF model file, the form llama.cpp, LM Studio and Ollama load without an adapter.

The file is made by llama.cpp's own converter (convert_hf_to_gguf.py) from the merged transformers folder, so tensor
layout, tokenizer and metadata (tokenizer.chat_template, the EOS id) are exactly what llama.cpp expects. The converter
comes from a llama.cpp checkout (`llama_cpp=` / LORATUNE_LLAMA_CPP), else from the llama.cpp source vendored in the
llama-cpp-python sdist of CONVERTER_RELEASE (the same pin as `make verify-gguf`), fetched once with pip into
<home>/tools/. It writes f32, f16, bf16 and q8_0 itself; q4_k_m needs llama.cpp's `llama-quantize` program.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from loratune.adapters.catalog import adapter_path, base_model_path
from loratune.adapters.files import normal_permissions, temporary
from loratune.adapters.merge import write_merged
from loratune.errors import LoratuneError
from loratune.workspace import Workspace, check_name, inside

CONVERTER_RELEASE = "0.3.36"  # llama-cpp-python sdist whose vendor/llama.cpp holds the converter
CONVERTER_OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # written by convert_hf_to_gguf.py itself
QUANTIZE_TYPES = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}  # f16 first, then llama-quantize
QUANTS = (*CONVERTER_OUTTYPES, *QUANTIZE_TYPES)
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def export_gguf_model(
    lora: str,
    home: str | Path | Workspace | None = None,
    quant: str = "q8_0",
    out: str | None = None,
    llama_cpp: str | Path | None = None,
) -> Path:
    """Write base + `lora` merged as `<adapter folder>/<out or model-<quant>.gguf>`; returns the file."""
    if quant not in QUANTS:
        raise LoratuneError(f"--quant {quant!r}: choose one of {', '.join(QUANTS)}")
    ws = home if isinstance(home, Workspace) else Workspace.resolve(home)
    adapter = adapter_path(lora, ws)
    target = inside(adapter, check_name(out or f"model-{quant}.gguf", "output file name"))
    converter = find_converter(ws, llama_cpp)
    quantize = find_quantize(llama_cpp) if quant in QUANTIZE_TYPES else None
    work = temporary(target, "tmp")  # beside the target (one disk for the final rename); cleaned if we are killed
    shutil.rmtree(work, ignore_errors=True)
    try:
        write_merged(adapter, base_model_path(adapter, ws), work / "merged", ws=ws)
        made = work / "model.gguf"
        convert_to_gguf(converter, work / "merged", made, quant if quant in CONVERTER_OUTTYPES else "f16")
        if quantize is not None:
            quantized = work / f"model-{quant}.gguf"
            _run([str(quantize), str(made), str(quantized), QUANTIZE_TYPES[quant]], "llama-quantize", {})
            made = quantized
        normal_permissions(made)
        os.replace(made, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def convert_to_gguf(converter: Path, model_dir: Path, outfile: Path, outtype: str) -> None:
    """Run llama.cpp's convert_hf_to_gguf.py (from `converter`, see find_converter) on a transformers folder."""
    _run(
        [sys.executable, str(converter / "convert_hf_to_gguf.py"), str(model_dir)]
        + ["--outtype", outtype, "--outfile", str(outfile)],
        "llama.cpp's convert_hf_to_gguf.py",
        {"PYTHONPATH": str(converter / "gguf-py")},
    )


def find_converter(ws: Workspace, llama_cpp: str | Path | None = None) -> Path:
    """A folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/ (fetched into <home>/tools/ if needed)."""
    given = llama_cpp or os.environ.get("LORATUNE_LLAMA_CPP")
    if given:
        folder = Path(given).expanduser()
        if not (folder / "convert_hf_to_gguf.py").is_file():
            raise LoratuneError(f"{folder} is not a llama.cpp checkout (no convert_hf_to_gguf.py in it)")
        return folder
    folder = ws.home / "tools" / f"llama.cpp-{CONVERTER_RELEASE}"
    if not (folder / "convert_hf_to_gguf.py").is_file():
        _fetch_converter(folder)
    return folder


def find_quantize(llama_cpp: str | Path | None) -> Path:
    """llama.cpp's llama-quantize: in the given checkout's build, or on PATH."""
    given = llama_cpp or os.environ.get("LORATUNE_LLAMA_CPP")
    candidates = [Path(given).expanduser() / "build" / "bin" / "llama-quantize"] if given else []
    on_path = shutil.which("llama-quantize")
    candidates += [Path(on_path)] if on_path else []
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise LoratuneError(
        "k-quants need llama.cpp's llama-quantize (build llama.cpp and pass --llama-cpp <checkout>, or put "
        "llama-quantize on PATH); or export --quant q8_0 / f16, which need no build"
    )


def _fetch_converter(folder: Path) -> None:
    """Download the pinned llama-cpp-python sdist with pip and keep only the converter's files."""
    download = folder.with_name(f".{folder.name}.download-{os.getpid()}")
    shutil.rmtree(download, ignore_errors=True)
    print(f"fetching llama.cpp's converter (llama-cpp-python {CONVERTER_RELEASE} source, ~77 MB, once) ...", flush=True)
    try:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        _run([*command, f"llama-cpp-python=={CONVERTER_RELEASE}", "-d", str(download)], "pip download", {})
        (sdist,) = download.glob("*.tar.gz")
        prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                part = member.name.removeprefix(prefix)
                if member.name.startswith(prefix) and part.startswith(_CONVERTER_PARTS) and member.isfile():
                    member.name = part
                    archive.extract(member, download / "tree", filter="data")
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(download / "tree", folder)
    finally:
        shutil.rmtree(download, ignore_errors=True)


def _run(command: list[str], what: str, env: dict[str, str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {result.returncode}"
        raise LoratuneError(f"{what} failed: {last}")
