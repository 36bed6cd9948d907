"""Model loading (hub, local, PyPI GGUF packages, random test models) and module templates."""

from xling_edit.models.loading import load_model
from xling_edit.models.spec import ModelSpec

__all__ = ["load_model", "ModelSpec"]
