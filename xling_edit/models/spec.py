"""Architecture knowledge as data: module-path templates resolved against a loaded model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from xling_edit.errors import ConfigError

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
    q_proj: str | None = None
    v_proj: str | None = None

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

    def n_layers(self, model: nn.Module) -> int:
        """How many blocks ``layer`` finds: 0, 1, 2, ... until one is missing."""
        n = 0
        while _find(model, self.layer.format(n)) is not None:
            n += 1
        return n

    def check(self, model: nn.Module, layers=(), what: str = "the model",
              layers_option: str = "method.layers") -> None:
        """Resolve every template (layer-indexed ones at layer 0 and at each of ``layers``) and
        check ``layers`` against the model's depth. Raises one :class:`ConfigError` that lists
        every missing module with the modules that do exist nearby, e.g. ``down_proj=
        'model.layers.{}.mlp.c_proj': no module 'model.layers.0.mlp.c_proj' (model.layers.0.mlp
        has: gate_proj, up_proj, down_proj, act_fn)``."""
        problems = []
        n = self.n_layers(model)
        name = f"{what} ({type(model).__name__})"
        at = sorted({0, *[int(l) for l in layers if 0 <= int(l) < n]})
        for kind in self.__dataclass_fields__:
            template = getattr(self, kind)
            if template is None:
                continue
            for layer in (at if "{}" in template else [None]):
                path = template.format(layer) if layer is not None else template
                module = _find(model, path)
                if module is None:
                    problems.append(f"{kind}={template!r}: no module {path!r} ({_nearby(model, path)})")
                    break
                if kind == "down_proj" and getattr(getattr(module, "weight", None), "ndim", 0) != 2:
                    problems.append(f"down_proj={template!r}: {path!r} is a {type(module).__name__} "
                                    f"without a 2-D weight (ROME/MEMIT rewrite a linear projection)")
                    break
        if problems:
            raise ConfigError(f"model.templates do not match {name}: " + "; ".join(problems))
        bad = sorted({int(l) for l in layers if not 0 <= int(l) < n})
        if bad:
            shown = int(list(layers)[0]) if layers_option.endswith(".layer") else list(layers)
            raise ConfigError(f"{layers_option}={shown}: {name} has {n} layers (0-{n - 1}); layer(s) "
                              f"{bad} out of range")


def _find(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _nearby(model: nn.Module, path: str) -> str:
    """``'<deepest existing prefix> has: child, child, ...'`` for a missing module path."""
    parts = path.split(".")
    for i in range(len(parts) - 1, -1, -1):
        prefix = ".".join(parts[:i])
        module = _find(model, prefix) if prefix else model
        if module is not None:
            children = [n for n, _ in module.named_children()]
            if len(children) > 12:  # a ModuleList: its index range, not every index
                children = children[:3] + ["...", children[-1]]
            return f"{prefix or 'the model'} has: {', '.join(children) or 'no submodules'}"
    return "no part of the path exists"


def is_transposed(module: nn.Module) -> bool:
    """True when ``module.weight`` is stored (in, out) as in GPT-2's Conv1D."""
    return bool(Conv1D) and isinstance(module, Conv1D)


def weight_as_out_in(module: nn.Module) -> torch.Tensor:
    """The projection's weight viewed as (out, in), whatever its storage layout."""
    w = module.weight
    return w.T if is_transposed(module) else w
