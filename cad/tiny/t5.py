"""A tiny T5 tokenizer and encoder built offline, for the SD 3.5 and FLUX.1 tiny pipelines.

Both families condition on a T5 v1.1 encoder. Its real SentencePiece model (32,100 pieces) cannot be
downloaded in CI, so `build_t5_tokenizer()` assembles a real `T5TokenizerFast` from the `tokenizers`
library: a Unigram model (the model type of T5's SentencePiece file) with T5's special-token layout
(`<pad>`=0, `</s>`=1, `<unk>`=2), a `▁` Metaspace pre-tokenizer and an `</s>` appended after every
sequence, so prompts split, pad and truncate the way they do with the real tokenizer. Every single
ASCII letter and digit (with and without the leading `▁`) is a piece too, so any ASCII word still
tokenizes (into letters) instead of collapsing to `<unk>`.
"""

from __future__ import annotations

import atexit
import json
import shutil
import string
import tempfile
from functools import cache
from pathlib import Path

import torch

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
# Words of the toy world's captions plus common prompt words; whole words beat their letters (higher score)
# so "a red circle" is three pieces, as with the real T5 vocabulary.
PROMPT_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "and", "with", "in", "on", "at", "over", "under", "by", "for", "to", "from",
    "is", "photo", "picture", "image", "painting", "drawing", "style", "shape", "portrait", "landscape",
    "circle", "square", "triangle", "cross", "ring", "diamond", "solid", "outline", "striped", "dotted",
    "red", "green", "blue", "yellow", "magenta", "cyan", "black", "white", "orange", "purple",
    "cat", "dog", "car", "church", "parachute", "beach", "tree", "house", "sky", "man", "woman", "person",
    "squirrel", "eating", "burger", "high", "quality", "detailed", "small", "large",
)
# Real T5 also has 100 `<extra_id_*>` sentinels (ids 32000-32099); the tiny one has none (extra_ids=0):
# nothing here uses span masking. Pipelines pass their own max_sequence_length (256 SD3, 512 FLUX).
MAX_LENGTH = 77


def t5_vocab(words: tuple[str, ...] = PROMPT_WORDS) -> list[tuple[str, float]]:
    """(piece, log-probability) pairs in id order: specials first, as T5 expects, then `▁`, words, letters."""
    vocab: list[tuple[str, float]] = [(PAD, 0.0), (EOS, 0.0), (UNK, 0.0), ("▁", -3.0)]
    seen = {p for p, _ in vocab}
    for w in dict.fromkeys(words):
        piece = "▁" + w
        if piece not in seen:
            vocab.append((piece, -5.0))
            seen.add(piece)
    for c in string.ascii_letters + string.digits + ".,!?'-":
        for piece in ("▁" + c, c):
            if piece not in seen:
                vocab.append((piece, -12.0))
                seen.add(piece)
    return vocab


@cache
def t5_tokenizer_files(model_max_length: int = MAX_LENGTH) -> Path:
    """Write tokenizer.json / tokenizer_config.json / special_tokens_map.json once per process (removed at
    exit). Loading from a folder is the path that behaves the same in transformers 4.x and 5.x."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    vocab = t5_vocab()
    tok = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
    # The same pipeline transformers 5's T5Tokenizer rebuilds from the vocabulary on load (it keeps only
    # the pieces), so 4.x (which loads tokenizer.json as is) and 5.x tokenize identically. Like real T5
    # there is no lowercasing: capitals fall back to their letter pieces.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single=["$A", EOS], pair=["$A", EOS, "$B", EOS], special_tokens=[(EOS, 1)]
    )
    out = Path(tempfile.mkdtemp(prefix="cad-t5-"))
    atexit.register(shutil.rmtree, out, True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": model_max_length,
        "pad_token": PAD,
        "eos_token": EOS,
        "unk_token": UNK,
        "extra_ids": 0,
        "additional_special_tokens": [],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    specials = {"pad_token": PAD, "eos_token": EOS, "unk_token": UNK}
    (out / "special_tokens_map.json").write_text(json.dumps(specials))
    return out


def build_t5_tokenizer(model_max_length: int = MAX_LENGTH):
    """A real `T5TokenizerFast` (Unigram, `▁` metaspace, `<pad>`=0 `</s>`=1 `<unk>`=2), built without network.

    Pipelines call it with their own `max_sequence_length` (padding="max_length"), so `model_max_length`
    only matters for direct calls.
    """
    from transformers import T5TokenizerFast

    tok = T5TokenizerFast.from_pretrained(str(t5_tokenizer_files(model_max_length)))
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2), "T5 special-token layout"
    return tok


def build_tiny_t5_encoder(
    seed: int = 0,
    vocab_size: int | None = None,
    d_model: int = 32,
    *,
    d_kv: int = 8,
    d_ff: int = 37,
    num_layers: int = 2,
    num_heads: int = 4,
    relative_attention_num_buckets: int = 8,
):
    """A randomly initialised `T5EncoderModel` of T5 v1.1's flavour (gated-gelu FF, untied embeddings, as the
    T5-XXL encoder of SD3/FLUX). `vocab_size` defaults to the tiny tokenizer's length."""
    from transformers import T5Config, T5EncoderModel

    if vocab_size is None:
        vocab_size = len(build_t5_tokenizer())
    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=relative_attention_num_buckets,
        relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()
