"""Image grids of a run that show its claim: the target concept's images first, then a few of every other class.

    grid = concept_grid(bench, {"original": f0, "edited": f1, "random-0": f2}, target="diamond",
                        out="runs/.../grid_toy_objects.png")

A row per variant (its images from the generation cache, one `<item id>.png` per item), a column per benchmark
item, the same item ids in every row, so a column compares one prompt and seed across variants. The first block
of columns is the target concept (what an erasure should remove), the second a few items of each other class
(what it should keep). A benchmark without labels (COCO captions, I2P) shows its first items; a target absent
from a labelled benchmark (a retain benchmark of another kind) shows every class evenly, with a warning.

Only PIL, with its default font: grids are written by every run, on machines without fonts or matplotlib.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from cad.io import atomic_write_bytes

log = logging.getLogger("cad.evaluation")

TARGET_COLOR = (200, 20, 20)   # target columns' labels and underline: the block the claim is about
OTHER_COLOR = (40, 40, 40)


@dataclass(frozen=True)
class GridPick:
    """Which items a grid shows, in column order, and why (`mode`: target, balanced or first)."""

    items: tuple  # benchmark items (id, prompt, seed, label)
    n_target: int  # the first n_target columns are the target concept's
    mode: str


def pick_items(benchmark, target: str | None, available: set[str] | None = None, *, n_target: int = 6,
               per_other: int = 2, n_first: int = 8) -> GridPick:
    """The grid's columns: up to `n_target` target items, then up to `per_other` of each other class.

    Items keep benchmark order within a class (the same picks every run, so grids of a sweep line up).
    `available` restricts to ids every variant has an image for. Unlabelled benchmarks: the first `n_first`.
    """
    if n_target < 0 or per_other < 0 or n_first < 1:
        raise ValueError(f"grid sizes must be >= 0 (n_first >= 1), got n_target={n_target}, "
                         f"per_other={per_other}, n_first={n_first}")
    items = [i for i in benchmark.items if available is None or i.id in available]
    labels = list(dict.fromkeys(i.label for i in items if i.label is not None))
    if not labels:
        return GridPick(tuple(items[:n_first]), 0, "first")
    key = _norm(target) if target is not None else None
    target_label = next((lab for lab in labels if _norm(lab) == key), None)
    if target_label is None:
        if target is not None:
            log.warning("grid of %s: target %r has no items there (labels: %s); showing every class evenly",
                        getattr(benchmark, "key", benchmark.name), target, ", ".join(map(str, labels[:12])))
        per_class = max(per_other, 1)
        return GridPick(tuple(_per_label(items, labels, per_class)), 0, "balanced")
    picked = [i for i in items if i.label == target_label][:n_target]
    others = [lab for lab in labels if lab != target_label]
    picked += _per_label(items, others, per_other)
    return GridPick(tuple(picked), min(n_target, sum(i.label == target_label for i in items)), "target")


def _per_label(items, labels, k: int) -> list:
    out = []
    for lab in labels:
        out += [i for i in items if i.label == lab][:k]
    return out


def _norm(label) -> str:
    return " ".join(str(label).replace("_", " ").split()).casefold()


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of a grid: a title line, a header of column labels, a left margin of row labels."""

    n_rows: int
    n_cols: int
    n_target: int
    size: int = 96
    margin: int = 72  # left: row labels
    title_h: int = 14
    header_h: int = 14  # column labels
    pad: int = 2  # between cells
    gap: int = 8  # between the target block and the others

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the image at row `row`, column `col` (x1, y1 exclusive)."""
        x = self.margin + col * (self.size + self.pad) + (self.gap if 0 < self.n_target <= col else 0)
        y = self.title_h + self.header_h + row * (self.size + self.pad)
        return x, y, x + self.size, y + self.size

    @property
    def image_size(self) -> tuple[int, int]:
        x1 = self.cell_box(0, self.n_cols - 1)[2]
        y1 = self.cell_box(self.n_rows - 1, 0)[3]
        return x1 + self.pad, y1 + self.pad


def concept_grid(benchmark, folders: Mapping[str, str | os.PathLike], target: str | None,
                 out: str | os.PathLike | None = None, *, n_target: int = 6, per_other: int = 2,
                 n_first: int = 8, size: int = 96) -> Image.Image:
    """Rows = variants (`folders`: row label -> image folder), columns = the items `pick_items` chooses.

    Columns are labelled with the item's class and seed; the target block's labels are red and set apart by
    a gap. Written to `out` (PNG, atomically) with the picked ids, prompts and folders in its text chunk.
    """
    paths = {str(k): Path(v) for k, v in folders.items()}
    if not paths:
        raise ValueError("no image folders to draw: pass at least one variant (e.g. {'original': folder})")
    for label, folder in paths.items():
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder for {label!r} not found: {folder}; generate it first")
    available = set.intersection(*({p.stem for p in f.glob("*.png")} for f in paths.values()))
    pick = pick_items(benchmark, target, available, n_target=n_target, per_other=per_other, n_first=n_first)
    if not pick.items:
        raise ValueError(f"no item of {getattr(benchmark, 'key', benchmark.name)} has an image in every one of "
                         f"{sorted(paths)}: generate them first")
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin = int(max(probe.textlength(k, font=font) for k in paths)) + 8
    layout = GridLayout(len(paths), len(pick.items), pick.n_target, size=size, margin=max(margin, 24))
    grid = Image.new("RGB", layout.image_size, "white")
    draw = ImageDraw.Draw(grid)
    draw.text((2, 1), _title(benchmark, target, pick), fill="black", font=font)
    for col, item in enumerate(pick.items):
        x0, y0, x1, _ = layout.cell_box(0, col)
        in_target = col < pick.n_target
        text = _fit(draw, _column_label(item), size, font)
        draw.text((x0 + 1, layout.title_h), text, fill=TARGET_COLOR if in_target else OTHER_COLOR, font=font)
        if in_target:
            draw.line((x0, y0 - 2, x1 - 1, y0 - 2), fill=TARGET_COLOR, width=1)
    for row, (label, folder) in enumerate(paths.items()):
        y_mid = (layout.cell_box(row, 0)[1] + layout.cell_box(row, 0)[3]) // 2
        draw.text((3, y_mid - 5), label, fill="black", font=font)
        for col, item in enumerate(pick.items):
            x0, y0, _, _ = layout.cell_box(row, col)
            grid.paste(_cell(folder / f"{item.id}.png", size), (x0, y0))
    # What made the grid travels with it: the picked ids, prompts and seeds, and the folders of each row.
    meta = {"benchmark": getattr(benchmark, "key", benchmark.name), "target": target, "mode": pick.mode,
            "n_target": pick.n_target, "rows": {k: str(v) for k, v in paths.items()},
            "columns": [{"id": i.id, "label": i.label, "seed": i.seed, "prompt": i.prompt} for i in pick.items],
            "layout": asdict(layout)}
    grid.info["cad_grid"] = json.dumps(meta)
    grid.info["caption"] = _caption(benchmark, list(paths), target, pick)
    if out is not None:
        info = PngInfo()
        info.add_text("cad_grid", grid.info["cad_grid"])
        buf = io.BytesIO()
        grid.save(buf, format="PNG", pnginfo=info)
        atomic_write_bytes(out, buf.getvalue())
    return grid


def _caption(benchmark, rows: Sequence[str], target: str | None, pick: GridPick) -> str:
    """A one-line caption for a logged grid (`grid.info["caption"]`): what the rows and column blocks are."""
    head = f"rows: {' / '.join(rows)}; columns: "
    if pick.mode == "target":
        return head + f"{pick.n_target} x target '{target}' (red), then other classes"
    if pick.mode == "balanced":
        return head + f"every class of {benchmark.name} (target '{target}' has no items there)"
    return head + f"the first {len(pick.items)} items of {benchmark.name} (unlabelled)"


def _title(benchmark, target, pick: GridPick) -> str:
    name = getattr(benchmark, "key", benchmark.name)
    if pick.mode == "target":
        return f"{name}: target '{target}' ({pick.n_target}) | other classes"
    if pick.mode == "balanced":
        return f"{name}: target '{target}' absent; every class"
    return f"{name}: first {len(pick.items)} items (no labels)"


def _column_label(item) -> str:
    label = item.label if item.label is not None else item.id
    seed = getattr(item, "seed", None)
    return f"{label} s{seed}" if seed is not None else str(label)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    """Cut a label to the cell width (class names like 'english springer' overflow 96 px)."""
    if draw.textlength(text, font=font) <= width - 2:
        return text
    while text and draw.textlength(text + "..", font=font) > width - 2:
        text = text[:-1]
    return text + ".."


def _cell(path: Path, size: int) -> Image.Image:
    im = Image.open(path).convert("RGB")
    # Toy images are 32 px: NEAREST keeps their pixels crisp; real renders shrink smoothly.
    resample = Image.Resampling.NEAREST if im.width <= size else Image.Resampling.LANCZOS
    return im.resize((size, size), resample)
