"""Evaluation of edited diffusion models: benchmarks (prompt sets), metrics, scoring and reports."""

from .benchmarks import Benchmark, Item, available_benchmarks, load_benchmark
from .data import PromptDataError, PromptFileNotFound, resolve_prompt_file

__all__ = ["Benchmark", "Item", "PromptDataError", "PromptFileNotFound", "available_benchmarks", "load_benchmark",
           "resolve_prompt_file"]
