"""What every editing method returns, and exact application / restoration of its deltas.

An editor computes weight deltas without touching the model; :func:`applied` adds them, yields,
and copies the saved originals back — only the edited tensors, bit for bit, even on error.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import torch
from torch import nn

from xling_edit.data.schema import LangRecord
from xling_edit.fastpaths import EditPaths


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


class Editor:
    """Base of every editing method. What a method can do is declared here, as class attributes
    the pipeline reads through :func:`capabilities` (it never probes an editor's attributes);
    what it must do is :meth:`edit`.

    Capabilities:
        kind: ``weights`` (deltas applied, then restored) or ``context`` (text before the
            prompt; no weights change, so only ``mode=single``).
        batched: :meth:`edit_batch` takes many requests at once (``mode=batch`` and
            ``all_languages``).
        sequential: edits may stay applied one after another (``mode=sequential``); stateful
            methods reset in :meth:`begin_group`.
        uses_dataset: :meth:`use_dataset` needs the run's cases (IKE's demonstrations,
            keybridge's exclusions from its fit).
        schema: the method's config dataclass (set by :func:`register_editor`).

    Every editor is built as ``Editor(hparams, spec, seed, covariance, covariance_label)``.
    """

    kind: ClassVar[str] = "weights"
    #: the published setup beyond the schema (statistics, prefixes, ...): reference.Published
    published: ClassVar[Any] = None
    batched: ClassVar[bool] = False
    sequential: ClassVar[bool] = True
    uses_dataset: ClassVar[bool] = False
    schema: ClassVar[type | None] = None

    #: the fast paths (xling_edit.fastpaths.EditPaths; the benchmark sets the plain ones)
    paths: ClassVar[Any] = EditPaths()

    def __init__(self, hparams: Mapping[str, Any], spec=None, seed: int = 0,
                 covariance: Callable[[int], torch.Tensor | None] | None = None,
                 covariance_label: str | None = None):
        self.spec, self.seed = spec, seed
        self.covariance, self.covariance_label = covariance, covariance_label

    @property
    def edit_layers(self) -> list[int]:
        """Blocks whose weights an edit changes (none for a context edit)."""
        return []

    def uses_statistics(self) -> bool:
        """Whether this configuration reads covariance statistics (``use_covariance``)."""
        return bool(getattr(self.hp, "use_covariance", False))

    def published_setup(self):
        """The :class:`~xling_edit.editing.reference.Published` setup this configuration is
        compared with (default: the class's ``published``)."""
        return self.published

    def practice(self) -> dict[str, str]:
        """How this configuration does what :attr:`Published.practice` describes, in words."""
        return {}

    def edit(self, model: nn.Module, tok, request: EditRequest) -> EditOutcome:
        raise NotImplementedError

    def edit_batch(self, model: nn.Module, tok, requests: Sequence[EditRequest]) -> EditOutcome:
        """Many requests in one edit; only ``batched`` methods take more than one."""
        if len(requests) != 1:
            raise ValueError(f"{type(self).__name__} edits one request at a time (batched=False)")
        return self.edit(model, tok, requests[0])

    def use_dataset(self, cases: Sequence, heldout: Sequence = ()) -> None:
        """The run's cases and the dataset's other cases (never evaluated in this run), before
        the first edit (IKE draws demonstrations from the held-out ones; keybridge keeps the
        evaluated ones out of its fit). Default: unused."""

    def begin_group(self) -> None:
        """Called before each case group (a single case, a batch, or a sequence of edits that
        stay applied). Default: no state to reset."""


@dataclass(frozen=True)
class Capabilities:
    """What the registry knows of a method without building it (:func:`capabilities`)."""

    name: str
    kind: str
    batched: bool
    sequential: bool
    uses_dataset: bool
    schema: type

    @property
    def modes(self) -> tuple[str, ...]:
        """The ``method.mode`` values the method supports."""
        if self.kind == "context":
            return ("single",)
        return ("single",) + (("batch", "all_languages") if self.batched else ()) + \
            (("sequential",) if self.sequential else ())

    def check_mode(self, mode: str, group_size: int) -> None:
        """A clear ``ValueError`` when the method cannot run ``mode`` or the group size is not
        positive."""
        from xling_edit.config import MODES

        if mode not in MODES:
            raise ValueError(f"method.mode={mode!r} unknown; one of {list(MODES)}")
        if group_size < 1:
            raise ValueError(f"method.num_edits must be >= 1, got {group_size}")
        if mode in self.modes:
            return
        if self.kind == "context":
            raise ValueError(f"method.mode={mode}: a context edit (the fact stated in the prompt) "
                             f"has no weights to combine; use mode=single")
        if mode in ("batch", "all_languages"):
            raise ValueError(f"method.mode={mode} needs a method that edits many facts at once "
                             f"(batched: memit, alphaedit, keybridge); {self.name} is not")
        raise ValueError(f"method.mode={mode}: {self.name} supports {list(self.modes)}")

    def configured_layers(self, mcfg) -> tuple[list[int], str]:
        """(the layers a method config edits, the option naming them): ``layers``, else
        ``layer``, else none (a context edit)."""
        if "layers" in mcfg:
            return [int(l) for l in mcfg.layers], "method.layers"
        if "layer" in mcfg:
            return [int(mcfg.layer)], "method.layer"
        return [], "method (no layers)"


EDITORS: dict[str, type[Editor]] = {}
SCHEMAS: dict[str, type] = {}  # method name -> its config dataclass


def capabilities(name: str) -> Capabilities:
    """The registered method ``name``'s capabilities (a ``ValueError`` naming the known ones)."""
    if name not in EDITORS:
        raise ValueError(f"unknown method {name!r}; available: {sorted(EDITORS)}")
    cls = EDITORS[name]
    return Capabilities(name, cls.kind, bool(cls.batched), bool(cls.sequential),
                        bool(cls.uses_dataset), SCHEMAS[name])


def register_editor(name: str, schema: type | None = None):
    """Class decorator: make an editor available as ``method.name=<name>``. ``schema`` is its
    config dataclass (default: the class attribute ``schema``); the pipeline validates the
    method config against it and fills the defaults from it."""

    def deco(cls):
        if not issubclass(cls, Editor):  # written before the base class: adopt it, say so once
            import warnings

            warnings.warn(f"editor {name!r} ({cls.__module__}.{cls.__name__}) does not subclass "
                          f"xling_edit.editing.base.Editor; it is adopted for now (deprecated: "
                          f"subclass Editor to declare its capabilities)", DeprecationWarning, stacklevel=2)
            cls = type(cls.__name__, (cls, Editor), {"__module__": cls.__module__})
        if cls.kind not in ("weights", "context"):
            raise TypeError(f"editor {name!r}: kind must be 'weights' or 'context', not {cls.kind!r}")
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
