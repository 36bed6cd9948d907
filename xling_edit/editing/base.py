"""What every editing method returns, and exact application / restoration of its deltas.

An editor computes weight deltas without touching the model; :func:`applied` adds them, yields,
and copies the saved originals back — only the edited tensors, bit for bit, even on error.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from torch import nn

from xling_edit.data.schema import LangRecord


class SkipCase(Exception):
    """The request cannot be edited (e.g. subject not found); recorded as skipped, not fatal."""


@dataclass
class EditRequest:
    case_id: str
    lang: Any  # LanguageConfig-like mapping: code, word_sep, kl_prompt, context_* fields
    record: LangRecord
    answer_prefix: str = ""


@dataclass
class WeightDelta:
    param: str  # parameter name in model.named_parameters()
    delta: torch.Tensor  # same shape and layout as the parameter


@dataclass
class EditOutcome:
    """What an edit returns. A **weight edit** returns ``deltas`` (applied by the pipeline and
    restored bit for bit). A **context edit** returns no delta and a ``context``: text shown
    before every evaluation prompt (in every evaluation language) while the edit is in force,
    or a callable ``(lang, prompt) -> str`` giving each prompt its own (possibly empty) text
    (a router: ``method=route``)."""

    deltas: list[WeightDelta]
    info: dict = field(default_factory=dict)  # JSON-able, written to results
    tensors: dict = field(default_factory=dict)  # e.g. k_star, v_star: for tests, not written
    context: Any = None  # str, or (lang, prompt) -> str

    @property
    def kind(self) -> str:
        """``weights`` or ``context`` (in every results line as ``edit_kind``)."""
        return "context" if self.context is not None else "weights"


class Editor(Protocol):
    def edit(self, model: nn.Module, tok, request: EditRequest) -> EditOutcome: ...


EDITORS: dict[str, Callable[..., Editor]] = {}
SCHEMAS: dict[str, type] = {}  # method name -> its config dataclass


def register_editor(name: str, schema: type | None = None):
    """Class decorator: make an editor available as ``method.name=<name>``. ``schema`` is its
    config dataclass (default: the class attribute ``schema``); the pipeline validates the
    method config against it and fills the defaults from it."""

    def deco(cls):
        EDITORS[name] = cls
        s = schema if schema is not None else getattr(cls, "schema", None)
        if s is None:
            raise TypeError(f"editor {name!r} declares no config schema")
        SCHEMAS[name] = s
        return cls

    return deco


def build_editor(name: str, **kwargs) -> Editor:
    try:
        factory = EDITORS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {sorted(EDITORS)}") from None
    return factory(**kwargs)


@contextmanager
def applied(model: nn.Module, deltas: Sequence[WeightDelta], full_copy: bool = False) -> Iterator[None]:
    """Add ``deltas`` to the model's weights, yield, then restore the originals bit for bit (also
    on error). Only the edited tensors are saved and copied back; ``full_copy=True`` is the plain
    path it replaces (a copy of every parameter, all copied back), kept for the benchmark."""
    params = dict(model.named_parameters())
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            if full_copy:
                saved = [(p, p.detach().clone()) for p in params.values()]
            for d in deltas:
                p = params[d.param]
                if not full_copy:
                    saved.append((p, p.detach().clone()))
                p.add_(d.delta.to(device=p.device, dtype=p.dtype))
        yield
    finally:
        with torch.no_grad():
            for p, orig in reversed(saved):
                p.copy_(orig)
