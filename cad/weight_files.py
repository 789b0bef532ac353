"""Which file of a local pipeline folder cannot be read, found from headers alone (no tensor loaded, no code run).

    problems = folder_problems(folder)   # ["<file>: <what is wrong>", ...]; [] when every file reads
    fix = LOCAL_FOLDER_FIX                # what to do about a local folder (never "download it": it is local)

diffusers answers a truncated safetensors file or a pickled .bin with "Unable to load weights from checkpoint
file", after the other components have loaded. The preflight (experiments/validate.py) and Backbone.load ask
this module instead, so the error names the file and says how to re-save it.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["LOCAL_FOLDER_FIX", "folder_problems"]

# The files diffusers / transformers read from a save_pretrained folder: configs, tokenizers and weights.
_TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_MAX_DEPTH = 2  # model_index.json at the top, <component>/<file> below it

LOCAL_FOLDER_FIX = (
    "re-save the pipeline from a working copy with `pipe.save_pretrained(folder)` (it writes safetensors, which "
    "load without running code), or copy the named file again from where the folder came from; a pickled file is "
    "converted once where you trust it: load that component with the code that wrote it and save it with "
    "`component.save_pretrained(<folder>/<component>)`"
)


def folder_problems(folder: str | Path) -> list[str]:
    """Each config, tokenizer or weight file of `folder` that does not read, as '<path>: <what is wrong>'.

    JSON files must parse; every safetensors file's header must parse and cover the file (a truncated copy does
    not); torch files (.bin, .pt, ...) are checked only in a component folder without safetensors (where
    from_pretrained falls back to them) and must hold plain tensors (torch.load with weights_only=True).
    """
    from .checkpoints import CheckpointFormatError, PickledCheckpointError, _torch_load

    folder = Path(folder).expanduser()
    files = sorted(p for p in _walk(folder, _MAX_DEPTH) if p.is_file())
    has_safetensors = {p.parent for p in files if p.name.endswith(".safetensors")}
    out = []
    for path in files:
        if path.suffix == ".json":
            why = _json_problem(path)
        elif path.suffix == ".safetensors":
            why = _safetensors_problem(path)
        elif path.suffix in _TORCH_SUFFIXES and path.parent not in has_safetensors:
            try:
                _torch_load(path)
                why = None
            except PickledCheckpointError:
                why = ("a pickled Python object, not plain tensors: loading it would run code from the file, which "
                       "cad never does")
            except CheckpointFormatError:
                why = "not a readable torch weights file (truncated or corrupt)"
        else:
            continue
        if why:
            out.append(f"{path}: {why}")
    return out


def _walk(folder: Path, depth: int):
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for p in entries:
        if p.name.startswith("."):
            continue  # hidden files (.cache, .gitattributes) are not part of the pipeline
        yield p
        if depth > 1 and p.is_dir():
            yield from _walk(p, depth - 1)


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return f"not valid JSON ({type(err).__name__}: {err})"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header and the tensor bytes it lists: a copy cut
    short or overwritten fails one of these without reading any tensor."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < n <= size - 8:
                return f"a truncated or corrupt safetensors file: its {size} bytes hold no complete header"
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, ValueError):
        return "a truncated or corrupt safetensors file: its header is not valid JSON"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):
        return "a truncated or corrupt safetensors file: its header does not list tensors"
    if 8 + n + end != size:
        return (f"a truncated or corrupt safetensors file: its header lists {8 + n + end} bytes, the file has "
                f"{size}")
    return None
