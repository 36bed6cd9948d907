"""Architecture knowledge as data: module-path templates resolved against a loaded model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

try:  # GPT-2 stores its projections as Conv1D, weight transposed relative to nn.Linear.
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()  # type: ignore[assignment]


@dataclass(frozen=True)
class ModelSpec:
    """Module-path templates of one architecture (see ``ModuleTemplates`` in config.py)."""

    layer: str
    mlp: str
    down_proj: str
    final_norm: str
    lm_head: str
    embed: str
    mlp_out_norm: str | None = None

    @classmethod
    def from_config(cls, templates: Mapping[str, Any]) -> "ModelSpec":
        return cls(**{k: (None if templates.get(k) is None else str(templates[k]))
                      for k in cls.__dataclass_fields__ if k in templates})

    def module(self, model: nn.Module, kind: str, layer: int | None = None) -> nn.Module:
        template = getattr(self, kind)
        if template is None:
            raise KeyError(f"model.templates.{kind} is not set for this model")
        path = template.format(layer) if "{}" in template else template
        try:
            return model.get_submodule(path)
        except AttributeError as exc:
            raise KeyError(
                f"model has no module {path!r} (template {kind}={template!r}); "
                f"check model.templates in the model config"
            ) from exc

    def down_proj_weight_name(self, layer: int) -> str:
        return self.down_proj.format(layer) + ".weight"


def is_transposed(module: nn.Module) -> bool:
    """True when ``module.weight`` is stored (in, out) as in GPT-2's Conv1D."""
    return bool(Conv1D) and isinstance(module, Conv1D)


def weight_as_out_in(module: nn.Module) -> torch.Tensor:
    """The projection's weight viewed as (out, in), whatever its storage layout."""
    w = module.weight
    return w.T if is_transposed(module) else w
