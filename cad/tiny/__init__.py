"""Tiny pipelines of every supported model family, built offline from the real diffusers/transformers classes.

One module per family: sd (SD 1.x/2.x), sdxl, sd3 (SD 3.5), flux (FLUX.1), plus t5 (the tiny T5 tokenizer and
encoder SD3/FLUX share). Tests, benchmarks and demos import from here. diffusers is imported inside the
builders, so importing this package stays cheap.
"""

from cad.tiny.flux import build_tiny_flux_pipeline
from cad.tiny.sd import build_clip_tokenizer, build_tiny_pipeline, clip_tokenizer_files
from cad.tiny.sd3 import build_tiny_sd3_pipeline
from cad.tiny.sdxl import build_tiny_sdxl_pipeline
from cad.tiny.t5 import build_t5_tokenizer, build_tiny_t5_encoder

__all__ = [
    "build_clip_tokenizer",
    "build_t5_tokenizer",
    "build_tiny_flux_pipeline",
    "build_tiny_pipeline",
    "build_tiny_sd3_pipeline",
    "build_tiny_sdxl_pipeline",
    "build_tiny_t5_encoder",
    "clip_tokenizer_files",
]
