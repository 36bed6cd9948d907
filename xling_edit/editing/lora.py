"""Fine-tuning baselines: LoRA / AdaLoRA adapters (through ``peft``) and FT-L (a block's
projection itself, L∞-bounded).

Two published forms share this editor (``kind``), each with named variants:

- ``method=lora`` — **EasyEdit's LoRA baseline** (``hparams/LoRA/llama-7b.yaml`` run through
  ``easyeditor/models/lora/lora_main.py``): ``kind: adalora``, peft's AdaLoRA adapters on the
  ``q_proj`` and ``v_proj`` of every block, trained with Adam (lr 5e-3, no weight decay) for 70
  steps on the teacher-forced NLL of ``target_new`` after the prompt (mean over the target
  tokens), plus the orthogonality penalty peft's AdaLoRA model adds to a loss the model computes
  (0.5 · mean ‖AAᵀ − I‖_F, ‖BᵀB − I‖_F), no early stop. peft's AdaLoRA ignores the ``r`` of
  EasyEdit's config (8) and builds adapters of its ``init_r`` (12): ΔW = B (A ⊙ E) · alpha /
  (ranknum + 1e-5), with E (the singular values) starting at 0. EasyEdit never calls
  ``update_and_allocate``, so AdaLoRA's rank budget never moves: ``rank`` stays 12.
  ``method=lora_down`` (``kind: lora``) is this project's earlier single-layer form: plain LoRA
  on one block's ``down_proj``, no adapter dropout, early stop on the NLL.
- ``method=ft_l`` — **ROME's FT-L** (kmeng01/rome ``baselines/ft``, ``hparams/FT/
  gpt2-xl_constr.json``): ``kind: full``, every parameter of one block's MLP output projection
  (weight, and bias where it has one) trained with Adam (lr 5e-4, 25 steps, stop once the loss
  is below 1e-2), the loss read at the **last prompt position only**: the prompt is the input
  (the target is not appended) and every target token's log-probability is taken from that one
  distribution (``loss: prompt_last``); after every step each parameter is clamped to
  [W₀ − c, W₀ + c] (c = ``norm_constraint`` = 5e-4). ``method=ft_l_nll`` is the same with the
  teacher-forced target NLL (``loss: target``), this project's earlier FT-L.

Adapters are merged into dense deltas in the parameter's own storage layout (GPT-2's Conv1D
stores (in, out): ΔWᵀ) and every peft wrapper is removed again, so the model leaves the editor
as the module tree it entered with, weights untouched; FT-L restores the trained parameters bit
for bit and returns their change. The editor returns deltas only; the pipeline applies them
(:func:`xling_edit.editing.base.applied`).
"""

from __future__ import annotations

import inspect
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, ClassVar, Iterator, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from xling_edit.config import schema_from_mapping
from xling_edit.editing.base import EditOutcome, EditRequest, Editor, WeightDelta, register_editor
from xling_edit.editing.reference import Published
from xling_edit.evaluation.forward import model_device
from xling_edit.evaluation.text import Encoded, encode
from xling_edit.models.spec import ModelSpec, is_transposed

KINDS = ("adalora", "lora", "full")
ADAPTER_KINDS = ("adalora", "lora")
LOSSES = ("target", "prompt_last")
ADAPTER = "xling_edit"  # the peft adapter name used while an edit trains
#: added to AdaLoRA's ranknum before dividing (peft's SVDLinear)
RANKNUM_EPS = 1e-5
#: Published.practice item: how the q and v projections are adapted
QV_ITEM = "attention_projections"
QV_SEPARATE = "separate q_proj and v_proj modules"


@dataclass
class LoraEditConfig:
    """LoRA / AdaLoRA / FT-L editing; the defaults are EasyEdit's LoRA baseline
    (``method=lora``); ``conf/method/{ft_l,lora_down,ft_l_nll}.yaml`` set the other forms.
    Per-model values come from ``model.hparams.lora`` (the published LoRA) and, for the named
    configurations, from ``model.hparams.<their file name>`` (see each file).

    Args:
        name: registry name.
        variant: the label recorded in results (``variant``): ``published`` (EasyEdit's LoRA),
            ``ft_l`` (ROME's FT-L), ``lora_down``, ``ft_l_nll`` — the four forms share the
            method name ``lora`` and are told apart by it in every results line and table.
        kind: ``adalora`` (peft's AdaLoRA adapters, as EasyEdit: ``lora_type: adalora``),
            ``lora`` (plain LoRA adapters) — both merged into dense deltas — or ``full``
            (FT-L: the projection's own parameters, L∞-bounded).
        target: the projections trained in each block, each a key of ``model.templates``
            holding a layer-indexed path (``q_proj``, ``v_proj``, ``down_proj``) or a module
            path below the block (``model.templates.layer``), e.g. ``self_attn.o_proj``; each a
            linear layer (``nn.Linear`` or GPT-2's ``Conv1D``). Where ``q_proj`` and
            ``v_proj`` name one fused module (GPT-2, NeoX, Phi-3) it is adapted once and
            ``edit.deviations`` says so.
        layers: blocks whose ``target`` is trained; empty: every block (EasyEdit's
            ``layers: []``).
        rank: adapter rank (``lora``: LoraConfig's ``r``; ``adalora``: AdaLoraConfig's
            ``init_r``, 12 as in EasyEdit, whose ``rank: 8`` peft's AdaLoRA ignores).
        alpha: adapter scale: ``lora`` multiplies by alpha / rank, ``adalora`` by
            alpha / (rank + 1e-5).
        dropout: dropout on the adapter's input while training (adapters only).
        orth_reg_weight: weight of AdaLoRA's orthogonality penalty, mean over the adapted
            modules of ‖AAᵀ − I‖_F and ‖BᵀB − I‖_F, added to the loss (``adalora`` only: peft
            adds it whenever the model computes the loss, as in EasyEdit); 0: none.
        steps: at most this many Adam updates.
        lr: Adam learning rate.
        weight_decay: Adam's (L2) weight decay.
        loss: ``target``: teacher-forced NLL of ``target_new`` after the prompt, mean over its
            tokens (EasyEdit's LoRA); ``prompt_last``: ROME's FT loss, the prompt alone as
            input and every target token's log-probability read at its last position.
        target_suffix: text trained after ``target_new`` (``loss: target`` only): EasyEdit's
            ``execute_lora`` trains on ``f"{prompt} {target} <|endoftext|>"``, the literal
            string, which tokenizers other than GPT-2's split into ordinary pieces; ``""``:
            the target alone.
        loss_stop: stop once the loss (the NLL, without the penalty) is below this (ROME's FT:
            1e-2); 0 always runs ``steps`` updates.
        stop_at_argmax: also stop once every target token is the model's top prediction
            (teacher forced; ``loss: target`` only): the smallest change that makes the edit
            prompt's greedy answer the target.
        norm_constraint: L∞ bound on the change, enforced after every step; null: none.
            FT-L clamps each parameter to [W₀ − c, W₀ + c] (ROME). Adapters cannot be clipped
            entrywise, so their last factor (LoRA's B, AdaLoRA's E) is scaled down until the
            merged change's largest entry is c.
        mode: ``single`` or ``sequential`` (one edit at a time; see EditMethodConfig.mode).
        num_edits: cases per group in ``sequential`` mode.
    """

    #: the model sections the named forms read and the fields they read from them
    #: (``${oc.select:model.hparams.<section>.<field>...}`` in their YAMLs); any other field
    #: there is an error, as an unknown one under ``model.hparams.lora`` is
    HPARAMS_VARIANTS: ClassVar[dict] = {"lora_down": ("layers", "steps", "lr", "loss_stop"),
                                        "ft_l": ("layers", "steps")}

    name: str = "lora"
    variant: str = "published"
    kind: str = "adalora"
    # Any: a list, or one name (``method.target=down_proj`` without brackets); __post_init__
    # makes it a list
    target: Any = field(default_factory=lambda: ["q_proj", "v_proj"])
    layers: List[int] = field(default_factory=list)
    rank: int = 12
    alpha: float = 32.0
    dropout: float = 0.1
    orth_reg_weight: float = 0.5
    steps: int = 70
    lr: float = 5.0e-3
    weight_decay: float = 0.0
    loss: str = "target"
    target_suffix: str = " <|endoftext|>"
    loss_stop: float = 0.0
    stop_at_argmax: bool = False
    norm_constraint: Optional[float] = None
    mode: str = "single"
    num_edits: int = 1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"method.kind={self.kind!r}: one of {list(KINDS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"method.loss={self.loss!r}: one of {list(LOSSES)}")
        if isinstance(self.target, str):
            self.target = [self.target]
        self.target = [str(t) for t in self.target]
        if not self.target:
            raise ValueError("method.target is empty: name the projections to train")
        if self.kind in ADAPTER_KINDS and self.rank < 1:
            raise ValueError(f"method.rank={self.rank}: must be >= 1")
        if self.steps < 1:
            raise ValueError(f"method.steps={self.steps}: must be >= 1")
        if self.norm_constraint is not None and self.norm_constraint <= 0:
            raise ValueError(f"method.norm_constraint={self.norm_constraint}: must be > 0 or null")
        if self.stop_at_argmax and self.loss != "target":
            raise ValueError("method.stop_at_argmax=true needs method.loss=target (prompt_last reads "
                             "every target token at one position)")


# ------------------------------------------------------------------ pure pieces
def lora_delta(a: torch.Tensor, b: torch.Tensor, scaling: float, transposed: bool) -> torch.Tensor:
    """ΔW = scaling · B A (float64) in the parameter's storage layout: (out, in) for
    ``nn.Linear``, (in, out) for GPT-2's Conv1D (``transposed``). ``a``: [r, in]; ``b``: [out, r]."""
    dw = float(scaling) * (b.double() @ a.double())
    return dw.T if transposed else dw


def adalora_delta(a: torch.Tensor, e: torch.Tensor, b: torch.Tensor, scaling: float,
                  ranknum: float, transposed: bool) -> torch.Tensor:
    """AdaLoRA's ΔW = B (A ⊙ E) · scaling / (ranknum + 1e-5) (float64; peft's SVDLinear), in the
    parameter's storage layout. ``a``: [r, in]; ``e``: [r, 1] (singular values); ``b``: [out, r]."""
    return lora_delta(a.double() * e.double(), b, float(scaling) / (float(ranknum) + RANKNUM_EPS),
                      transposed)


def orthogonality_penalty(pairs) -> torch.Tensor:
    """AdaLoRA's regulariser: the mean over every A and B of ``pairs`` [(A [r, in], B [out, r])]
    of ‖AAᵀ − I‖_F and ‖BᵀB − I‖_F (peft's ``AdaLoraModel.forward``)."""
    terms = []
    for a, b in pairs:
        for gram in (a @ a.T, b.T @ b):
            eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
            terms.append(torch.linalg.matrix_norm(gram - eye))
    return torch.stack(terms).mean()


def clamp_to_ball(w: torch.Tensor, w0: torch.Tensor, radius: float) -> torch.Tensor:
    """``w`` clamped entrywise to [w0 − radius, w0 + radius] (ROME's FT: after every step)."""
    return torch.clamp(w, min=w0 - radius, max=w0 + radius)


def target_nll(model: nn.Module, ids: torch.Tensor, enc: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean NLL of the target tokens, their logits [n_target, vocab]); teacher forced: the
    logits at position p - 1 predict the token at p, for every target position p. Only those
    positions go through the LM head when the model takes ``logits_to_keep`` (with a 262k
    vocabulary the head costs more than the blocks)."""
    keep = len(enc.input_ids) - enc.n_prompt + 1  # the last `keep` positions, the final one unused
    kwargs = {"logits_to_keep": keep} if _takes_logits_to_keep(type(model)) else {}
    logits = model(input_ids=ids, use_cache=False, **kwargs).logits[0, -keep:-1]
    tgt = ids[0, enc.n_prompt:]
    return F.cross_entropy(logits.float(), tgt), logits


def prompt_last_nll(model: nn.Module, ids: torch.Tensor, enc: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
    """ROME's FT loss: (−mean over the target tokens t of log p(t | prompt), the logits [1,
    vocab]) — the prompt alone is the input and every target token is read from the
    distribution at its **last** position (not teacher forced: the second target token is
    scored where the first should come)."""
    prompt = ids[:, :enc.n_prompt]
    kwargs = {"logits_to_keep": 1} if _takes_logits_to_keep(type(model)) else {}
    logits = model(input_ids=prompt, use_cache=False, **kwargs).logits[0, -1:]
    logp = torch.log_softmax(logits.float(), dim=-1)[0]
    return -logp[ids[0, enc.n_prompt:]].mean(), logits


LOSS_FUNCTIONS = {"target": target_nll, "prompt_last": prompt_last_nll}


def _all_top(logits: torch.Tensor, ids: torch.Tensor, enc: Encoded) -> bool:
    """Every target token is the argmax at its position (``logits`` from :func:`target_nll`)."""
    return bool((logits.detach().argmax(-1) == ids[0, enc.n_prompt:]).all())


@lru_cache(maxsize=None)
def _takes_logits_to_keep(cls: type) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


@contextmanager
def trainable_only(model: nn.Module, params: list[torch.Tensor] = ()) -> Iterator[None]:
    """Only ``params`` require gradients inside (the rest of the model builds no graph); every
    parameter's ``requires_grad`` is put back afterwards, also on error."""
    before = [(p, p.requires_grad) for p in model.parameters()]
    keep = {id(p) for p in params}
    try:
        for p, _ in before:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in before:
            p.requires_grad_(flag)


# ------------------------------------------------------------------ the editor
@register_editor("lora", schema=LoraEditConfig)
class LoraEditor(Editor):
    """LoRA / AdaLoRA adapters merged into dense deltas, or FT-L (module docstring).

    Args:
        hparams: a ``LoraEditConfig`` mapping (already merged with the model's values).
        spec: module templates.
        seed: with the case id, seeds the adapters' random initialisation.
        covariance, covariance_label: unused (accepted like every editor's).
    """

    schema = LoraEditConfig
    #: EasyEdit's LoRA baseline: every algorithmic field of the schema at its published value
    published = Published(
        source="EasyEdit's LoRA baseline (zjunlp/EasyEdit hparams/LoRA/llama-7b.yaml through "
               "easyeditor/models/lora/lora_main.py): AdaLoRA (peft init_r 12, alpha 32, dropout "
               "0.1) on q_proj and v_proj of every layer, Adam lr 5e-3, 70 steps, target NLL + "
               "peft's orthogonality penalty, no early stop",
        fields={"kind": "adalora", "target": ["q_proj", "v_proj"], "layers": [], "rank": 12,
                "alpha": 32.0, "dropout": 0.1, "orth_reg_weight": 0.5, "steps": 70, "lr": 5e-3,
                "weight_decay": 0.0, "loss": "target", "target_suffix": " <|endoftext|>",
                "loss_stop": 0.0, "stop_at_argmax": False, "norm_constraint": None},
        practice={QV_ITEM: QV_SEPARATE})
    #: ROME's FT-L baseline (kmeng01/rome baselines/ft, hparams/FT/gpt2-xl_constr.json); the
    #: layer is a per-model choice (GPT-2 XL: 0)
    published_ft_l = Published(
        source="Meng et al. 2022, FT-L baseline (kmeng01/rome baselines/ft/ft_main.py, "
               "hparams/FT/gpt2-xl_constr.json): one layer's MLP output projection (weight and "
               "bias), loss at the last prompt position, clamp to W0 +- 5e-4 after every step, "
               "Adam lr 5e-4, 25 steps, stop below 1e-2",
        fields={"kind": "full", "target": ["down_proj"], "steps": 25, "lr": 5e-4,
                "weight_decay": 0.0, "loss": "prompt_last", "target_suffix": "", "loss_stop": 1e-2,
                "stop_at_argmax": False, "norm_constraint": 5e-4})

    def published_setup(self):
        return self.published_ft_l if self.hp.kind == "full" else self.published

    def practice(self) -> dict[str, str]:
        if self.hp.kind == "full":
            return {}
        fused = self.fused_qv()
        return {QV_ITEM: f"one fused q/k/v module {fused} (q_proj and v_proj name it)"
                if fused else QV_SEPARATE}

    def __init__(self, hparams: Mapping[str, Any], spec: ModelSpec, seed: int = 0,
                 covariance: Callable[[int], torch.Tensor | None] | None = None,
                 covariance_label: str | None = None):
        super().__init__(hparams, spec, int(seed), covariance, covariance_label)
        self.hp = schema_from_mapping(LoraEditConfig, hparams)

    @property
    def edit_layers(self) -> list[int]:
        """Blocks whose weights an edit changes (empty: every block)."""
        return sorted(int(l) for l in self.hp.layers)

    def fused_qv(self) -> str | None:
        """The template of the module that ``q_proj`` and ``v_proj`` both name (a fused q/k/v
        projection), when ``target`` names both; else None."""
        t = self.hp.target
        q, v = getattr(self.spec, "q_proj", None), getattr(self.spec, "v_proj", None)
        return q if "q_proj" in t and "v_proj" in t and q is not None and q == v else None

    def module_path(self, layer: int, target: str | None = None) -> str:
        """Where ``target`` (default: the first of ``method.target``) lives in block ``layer``."""
        t = self.hp.target[0] if target is None else target
        if t in ModelSpec.__dataclass_fields__:
            template = getattr(self.spec, t, None)
            if template is None:
                raise ValueError(f"method.target={t!r}: model.templates.{t} is not set for this model")
            if "{}" not in template:
                raise ValueError(f"method.target={t!r}: model.templates.{t} is not inside a block")
            return template.format(layer)
        return f"{self.spec.layer.format(layer)}.{t}"

    def layers_of(self, model: nn.Module) -> list[int]:
        """``method.layers``, or every block of ``model`` when it is empty."""
        return self.edit_layers or list(range(self.spec.n_layers(model)))

    def _targets(self, model: nn.Module, layers: list[int]) -> dict[str, nn.Module]:
        """{path: module} of every projection trained in ``layers``, in block order (a fused
        module once)."""
        out = {}
        for layer in layers:
            for t in self.hp.target:
                path = self.module_path(layer, t)
                try:
                    m = model.get_submodule(path)
                except AttributeError:
                    raise ValueError(f"method.target={t!r}: the model has no module {path!r}") from None
                if getattr(getattr(m, "weight", None), "ndim", 0) != 2:
                    raise ValueError(f"method.target={t!r}: {path!r} is a {type(m).__name__}, "
                                     f"not a linear projection")
                out[path] = m
        return out

    def edit(self, model: nn.Module, tok, request: EditRequest) -> EditOutcome:
        hp = self.hp
        t0 = time.perf_counter()
        rec = request.record
        prompt = rec.prompt + request.answer_prefix
        suffix = hp.target_suffix if hp.loss == "target" else ""
        enc = encode(tok, prompt, rec.target_new + suffix, request.lang["word_sep"])
        ids = torch.tensor([enc.input_ids], device=model_device(model))
        layers = self.layers_of(model)
        targets = self._targets(model, layers)
        was_training = model.training
        model.eval()  # no dropout in the model; the adapters' own dropout is switched on separately
        try:
            with trainable_only(model):  # peft freezes the base weights: give their flags back
                if hp.kind in ADAPTER_KINDS:
                    deltas, trace, tensors = self._train_adapters(model, ids, enc, targets, request.case_id)
                else:
                    deltas, trace, tensors = self._train_full(model, ids, enc, targets)
        finally:
            model.train(was_training)
        params = dict(model.named_parameters())
        info = {
            "method": "lora", "variant": hp.variant, "kind": hp.kind, "edit_kind": "weights",
            "loss": hp.loss,
            "deviations": {},  # the pipeline adds every field that differs from the published setup
            "target": list(hp.target), "layers": layers,
            "params": [d.param for d in deltas],
            "steps": trace["steps"], "lr": hp.lr,
            "nll_before": round(trace["nll"][0], 4), "nll_after": round(trace["nll"][-1], 4),
            "nll_trajectory": [round(x, 4) for x in trace["nll"]],
            "norm_constraint": hp.norm_constraint,
            "delta_max_abs": max(float(d.delta.abs().max()) for d in deltas),
            "update_rel_norm": {d.param: float(d.delta.double().norm() / params[d.param].double().norm())
                                for d in deltas},
            "n_prompt_tokens": enc.n_prompt, "n_target_tokens": len(enc.target_ids),
            "edit_s": round(time.perf_counter() - t0, 3),
        }
        if hp.kind in ADAPTER_KINDS:
            info.update(rank=hp.rank, alpha=hp.alpha, dropout=hp.dropout,
                        scaling=_scale(next(iter(tensors["adapters"].values()))))
            if hp.kind == "adalora":
                info["penalty_trajectory"] = [round(x, 4) for x in trace["penalty"]]
        return EditOutcome(deltas=deltas, info=info, tensors={**tensors, "encoded": enc})

    # -------------------------------------------------------------- training loop
    def _fit(self, model, ids, enc, params: list[torch.Tensor], constrain,
             penalty: Callable[[], torch.Tensor] | None = None,
             settle: Callable[[], bool] = lambda: False) -> tuple[dict, torch.Tensor]:
        """Adam on ``params`` against the loss (``method.loss``, plus ``penalty()`` when given);
        ``constrain()`` after every step. ``settle()`` switches training-only behaviour off
        before the final logits are taken (the adapters' dropout; True when it was on, so that
        an early stop's logits are measured again). Returns ({"nll": per forward, "penalty":
        per forward, "steps": updates made}, the final loss logits: what the merged edit
        computes)."""
        hp = self.hp
        loss_fn = LOSS_FUNCTIONS[hp.loss]
        opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        nlls, pens, steps, final = [], [], 0, None
        with trainable_only(model, params):
            for _ in range(hp.steps):
                nll, logits = loss_fn(model, ids, enc)
                value = float(nll.detach())
                nlls.append(value)
                if value != value or value in (float("inf"), float("-inf")):
                    raise FloatingPointError(f"target NLL is {value} after {steps} steps")
                if value < hp.loss_stop or (hp.stop_at_argmax and _all_top(logits, ids, enc)):
                    final = logits.detach()
                    break
                loss = nll
                if penalty is not None:
                    pen = penalty()
                    pens.append(float(pen.detach()))
                    loss = nll + pen
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                with torch.no_grad():
                    constrain()
            stopped = final is not None
            if settle() or not stopped:  # measure where the last update landed, dropout off
                with torch.no_grad():
                    nll, final = loss_fn(model, ids, enc)
                    if not stopped:
                        nlls.append(float(nll))
                        if penalty is not None:
                            pens.append(float(penalty()))
        return {"nll": nlls, "penalty": pens, "steps": steps}, final

    def _train_full(self, model, ids, enc, targets):
        """FT-L: train every parameter of each target module (weight, and bias where it has
        one: ROME selects the parameters under the module's path) in place, clamp each to
        [W₀ − c, W₀ + c] after every step, return the changes and restore W₀ exactly."""
        c = self.hp.norm_constraint
        weights = {f"{path}.{n}": p for path, m in targets.items()
                   for n, p in m.named_parameters(recurse=False)}
        saved = {name: w.detach().clone() for name, w in weights.items()}

        def constrain():
            if c is not None:
                for name, w in weights.items():
                    w.copy_(clamp_to_ball(w, saved[name], c))

        try:
            trace, logits = self._fit(model, ids, enc, list(weights.values()), constrain)
            with torch.no_grad():
                deltas = [WeightDelta(name, w.detach() - saved[name]) for name, w in weights.items()]
        finally:
            with torch.no_grad():
                for name, w in weights.items():
                    w.copy_(saved[name])
        return deltas, trace, {"final_logits": logits}

    def _train_adapters(self, model, ids, enc, targets, case_id: str):
        """LoRA / AdaLoRA through peft: inject adapters on the targets, train them, merge them
        into dense deltas, remove every peft module (also on error)."""
        hp = self.hp
        transposed = {is_transposed(m) for m in targets.values()}
        if len(transposed) != 1:
            raise ValueError(f"method.target={list(hp.target)}: mixes Conv1D and Linear layers")
        fan_in_fan_out = transposed.pop()
        if hp.kind == "adalora":
            from peft import AdaLoraConfig
            from peft.tuners.adalora import AdaLoraModel as Tuner

            # EasyEdit's AdaLoraConfig call, with the rank it gets (init_r) named; total_step
            # only has to be set (EasyEdit never calls update_and_allocate)
            config = AdaLoraConfig(init_r=hp.rank, lora_alpha=hp.alpha, lora_dropout=hp.dropout,
                                   target_modules=list(targets), fan_in_fan_out=fan_in_fan_out,
                                   total_step=hp.steps, orth_reg_weight=hp.orth_reg_weight,
                                   bias="none", init_lora_weights=True)
        else:
            from peft import LoraConfig
            from peft.tuners.lora import LoraModel as Tuner

            config = LoraConfig(r=hp.rank, lora_alpha=hp.alpha, lora_dropout=hp.dropout,
                                target_modules=list(targets), fan_in_fan_out=fan_in_fan_out,
                                bias="none", init_lora_weights=True)
        originals = dict(targets)
        # the adapters' random init from (seed, case): the same edit whatever ran before it
        case_seed = (self.seed * 1_000_003 + zlib.crc32(str(case_id).encode())) % (2 ** 63)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(case_seed)
            tuner = Tuner(model, config, ADAPTER)
        try:
            layers = {path: model.get_submodule(path) for path in targets}
            for m in layers.values():
                m.lora_dropout[ADAPTER].train(hp.dropout > 0)
            factors = {path: _factors(m, hp.kind) for path, m in layers.items()}
            trained = [f[k] for f in factors.values() for k in "AEB" if k in f]
            penalty = None
            if hp.kind == "adalora" and hp.orth_reg_weight > 0:
                pairs = [(f["A"], f["B"]) for f in factors.values()]

                def penalty():
                    return hp.orth_reg_weight * orthogonality_penalty(pairs)

            def constrain():
                if hp.norm_constraint is None:
                    return
                for path, f in factors.items():  # shrink the last factor (E, else B) until it fits
                    peak = float(_merged(f, False).abs().max())
                    if peak > hp.norm_constraint:
                        f.get("E", f["B"]).mul_(hp.norm_constraint / peak)

            def settle() -> bool:
                for m in layers.values():
                    m.lora_dropout[ADAPTER].eval()
                return hp.dropout > 0

            trace, logits = self._fit(model, ids, enc, trained, constrain, penalty, settle)
            adapters, deltas = {}, []
            for path, f in factors.items():
                w = originals[path].weight
                with torch.no_grad():
                    dw = _merged(f, fan_in_fan_out)
                deltas.append(WeightDelta(f"{path}.weight", dw.to(dtype=w.dtype, device=w.device)))
                adapters[f"{path}.weight"] = {k: (v.detach().clone() if torch.is_tensor(v) else v)
                                              for k, v in f.items()}
        finally:
            tuner.unload()  # puts every original module back, drops model.peft_config
        left = [n for n, m in model.named_modules() if type(m).__module__.startswith("peft.")]
        if left or any(model.get_submodule(p) is not m for p, m in originals.items()):
            raise RuntimeError(f"peft modules left in the model after the edit: {left[:5]}")
        return deltas, trace, {"final_logits": logits, "adapters": adapters}


def _factors(m: nn.Module, kind: str) -> dict:
    """A peft layer's trained factors: A, B (and AdaLoRA's E and ranknum) and the scaling."""
    a, b = m.lora_A[ADAPTER], m.lora_B[ADAPTER]
    if kind == "adalora":  # SVDLinear keeps its factors as bare parameters
        return {"A": a, "E": m.lora_E[ADAPTER], "B": b, "scaling": float(m.scaling[ADAPTER]),
                "ranknum": float(m.ranknum[ADAPTER])}
    return {"A": a.weight, "B": b.weight, "scaling": float(m.scaling[ADAPTER])}


def _scale(f: dict) -> float:
    """The factor the adapter's product is multiplied by (AdaLoRA: scaling / (ranknum + 1e-5))."""
    return f["scaling"] / (f["ranknum"] + RANKNUM_EPS) if "E" in f else f["scaling"]


def _merged(f: dict, transposed: bool) -> torch.Tensor:
    """The dense change (float64) of one adapter's factors (:func:`_factors`)."""
    if "E" in f:
        return adalora_delta(f["A"], f["E"], f["B"], f["scaling"], f["ranknum"], transposed)
    return lora_delta(f["A"], f["B"], f["scaling"], transposed)
