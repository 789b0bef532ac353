"""Edits of a denoiser's weights: mask edits (entries zeroed) and weight edits (new values for named tensors).

Both apply reversibly with a bit-exact restore, refuse another model, save with their identity inside the
safetensors file, and export as a plain diffusers folder. See base.py for the shared contract.
"""

from cad.edits.base import BaseEdit, EditFileError, EditMismatchError, load_edit
from cad.edits.compose import ComposedEdit, load_composed
from cad.edits.export import export_edited_pipeline
from cad.edits.mask import Edit
from cad.edits.weights import WeightEdit

MaskEdit = Edit

__all__ = ["BaseEdit", "ComposedEdit", "load_composed", "Edit", "EditFileError", "EditMismatchError", "MaskEdit", "WeightEdit",
           "export_edited_pipeline", "load_edit"]
