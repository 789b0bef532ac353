"""Tiny pipelines of every supported model family, built offline from the real diffusers/transformers classes.

One module per family (sd, and the others as they land); tests, benchmarks and demos import from here.
"""

from cad.tiny.sd import build_clip_tokenizer, build_tiny_pipeline, clip_tokenizer_files

__all__ = ["build_clip_tokenizer", "build_tiny_pipeline", "clip_tokenizer_files"]
