"""A real transformers CLIPTokenizer over the toy world's vocabulary, every world word one token.

The vocabulary is the 26 letters (plain and word-final) plus a chain of BPE merges per world word, generated
so that each word merges all the way to a single token. A tokenizer this small keeps the text encoder's
embedding table (and so the committed kit) tiny while the pipeline still loads through the standard
CLIPTokenizer code path of SD 1.x.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

from cad.toy.world import COLORS, SHAPES, STYLES

# Words a caption or a benchmark prompt may use; anything else maps to the unknown token.
EXTRA_WORDS: tuple[str, ...] = ("a", "an", "of", "shape", "image", "photo", "picture", "the", "and", "with")
WORDS: tuple[str, ...] = EXTRA_WORDS + SHAPES + STYLES + COLORS
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 16  # "a red striped circle" is 4 words + 2 specials; 16 leaves room for longer prompts


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE: repeatedly merge the adjacent pair of lowest rank (what CLIPTokenizer does)."""
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        pairs = [(r, i) for r, i in pairs if r is not None]
        if not pairs:
            break
        rank = min(pairs)[0]
        a, b = next((symbols[i], symbols[i + 1]) for r, i in pairs if r == rank)
        out, i = [], 0
        while i < len(symbols):
            if i < len(symbols) - 1 and symbols[i] == a and symbols[i + 1] == b:
                out.append(a + b)
                i += 2
            else:
                out.append(symbols[i])
                i += 1
        symbols = out
    return symbols


def world_merges(words=WORDS) -> list[tuple[str, str]]:
    """Merges under which every word becomes one token. A merge appended last cannot break a word that is
    already a single token (it has no pairs left), so adding each word's missing merges in turn is safe."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        while True:
            symbols = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
            if len(symbols) == 1:
                break
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
    return merges


def write_tokenizer_files(out_dir: str | Path, words=WORDS) -> Path:
    """Write vocab.json and merges.txt for the world tokenizer into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merges = world_merges(words)
    letters = list(string.ascii_lowercase)
    vocab = letters + [c + "</w>" for c in letters]
    for a, b in merges:
        if a + b not in vocab:
            vocab.append(a + b)
    vocab += [BOS, EOS]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return out


def build_world_tokenizer(model_max_length: int = MAX_LENGTH):
    """A CLIPTokenizer over the world vocabulary, built offline (unknown words map to <|endoftext|>)."""
    from transformers import CLIPTokenizer

    # The tokenizer reads its files when built, so they live in a folder removed right after.
    with tempfile.TemporaryDirectory(prefix="cad-toy-tok-") as tmp:
        files = write_tokenizer_files(tmp)
        return CLIPTokenizer.from_pretrained(str(files), model_max_length=model_max_length, pad_token=EOS,
                                             unk_token=EOS, bos_token=BOS, eos_token=EOS)
