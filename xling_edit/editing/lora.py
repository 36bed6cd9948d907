"""Fine-tuning baselines: LoRA adapters (through ``peft``) and FT-L (one projection, norm-bounded).

Both minimise the teacher-forced NLL of ``target_new`` after the edit prompt (mean over the
target tokens only; the prompt is the context and is not predicted), with Adam:

- ``kind: lora`` — rank-r adapters on the ``target`` projection of each block in ``layers``
  (Hu et al., 2022). After training the adapters are merged into dense deltas,
  ΔW = scaling · B A with scaling = alpha / rank, in the parameter's own storage layout (GPT-2's
  Conv1D stores (in, out): ΔWᵀ), and every peft wrapper is removed again, so the model leaves the
  editor as the module tree it entered with, weights untouched.
- ``kind: full`` — FT-L (Zhu et al., 2020; ROME's constrained fine-tuning baseline): the
  projection's weight itself is trained; after every step the change is clipped to the L∞ ball
  of radius ``norm_constraint``. The weight is restored bit for bit and the change returned.

The editor returns deltas only; the pipeline applies them (:func:`xling_edit.editing.base.applied`).
"""

from __future__ import annotations

import inspect
import time
import zlib
from contextlib import contextmanager
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from xling_edit.config import schema_from_mapping
from xling_edit.editing.base import EditOutcome, EditRequest, Editor, WeightDelta, register_editor
from xling_edit.editing.reference import Published
from xling_edit.evaluation.forward import model_device
from xling_edit.evaluation.text import Encoded, encode
from xling_edit.models.spec import ModelSpec, is_transposed

KINDS = ("lora", "full")
ADAPTER = "xling_edit"  # the peft adapter name used while an edit trains


@dataclass
class LoraEditConfig:
    """LoRA / FT-L editing; per-model values come from ``model.hparams.lora`` (both kinds: the
    method is ``lora``, ``conf/method/ft_l.yaml`` selects ``kind: full``).

    Args:
        name: registry name.
        variant: the label recorded in results (``variant``); the method files set it to
            ``kind``, so LoRA and FT-L runs are told apart in every results line and table.
        kind: ``lora`` (adapters, merged into dense deltas) or ``full`` (FT-L: the weight
            itself, L∞-bounded).
        target: the projection to train in each block: a key of ``model.templates`` holding a
            layer-indexed path (``down_proj``, the MLP output projection), or a module path
            below the block (``model.templates.layer``), e.g. ``self_attn.o_proj``. It must be a
            linear layer (``nn.Linear`` or GPT-2's ``Conv1D``).
        layers: blocks whose ``target`` is trained (FT-L as published trains one).
        rank: LoRA rank r.
        alpha: LoRA alpha; the adapter's output is scaled by alpha / rank.
        dropout: dropout on the adapter's input while training (LoRA only).
        steps: at most this many Adam updates.
        lr: Adam learning rate.
        loss_stop: stop once the target NLL (mean per token) is below this (ROME's FT
            baseline: 1e-2); 0 always runs ``steps`` updates.
        stop_at_argmax: also stop once every target token is the model's top prediction
            (teacher forced): the smallest change that makes the edit prompt's greedy answer
            the target, which leaves more of the unrelated prompts alone.
        norm_constraint: L∞ bound on the weight change, enforced after every step; null: none.
            FT-L clips each entry of W − W₀ to [−c, c]. LoRA cannot clip a low-rank product
            entrywise, so B is scaled down until max |scaling · B A| ≤ c.
        mode: ``single`` or ``sequential`` (one edit at a time; see EditMethodConfig.mode).
        num_edits: cases per group in ``sequential`` mode.
    """

    name: str = "lora"
    variant: str = "lora"
    kind: str = "lora"
    target: str = "down_proj"
    layers: List[int] = field(default_factory=lambda: [0])
    rank: int = 8
    alpha: float = 32.0
    dropout: float = 0.0
    steps: int = 30
    lr: float = 5.0e-3
    loss_stop: float = 1.0e-2
    stop_at_argmax: bool = False
    norm_constraint: Optional[float] = None
    mode: str = "single"
    num_edits: int = 1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"method.kind={self.kind!r}: one of {list(KINDS)}")
        if not self.layers:
            raise ValueError("method.layers is empty: name the blocks to train")
        if self.kind == "lora" and self.rank < 1:
            raise ValueError(f"method.rank={self.rank}: must be >= 1")
        if self.norm_constraint is not None and self.norm_constraint <= 0:
            raise ValueError(f"method.norm_constraint={self.norm_constraint}: must be > 0 or null")


# ------------------------------------------------------------------ pure pieces
def lora_delta(a: torch.Tensor, b: torch.Tensor, scaling: float, transposed: bool) -> torch.Tensor:
    """ΔW = scaling · B A (float64) in the parameter's storage layout: (out, in) for
    ``nn.Linear``, (in, out) for GPT-2's Conv1D (``transposed``). ``a``: [r, in]; ``b``: [out, r]."""
    dw = float(scaling) * (b.double() @ a.double())
    return dw.T if transposed else dw


def clip_linf(delta: torch.Tensor, radius: float) -> torch.Tensor:
    """``delta`` with every entry clipped to [−radius, radius] (the L∞ ball's projection)."""
    return delta.clamp(min=-radius, max=radius)


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
    """LoRA adapters merged into dense deltas, or FT-L (module docstring).

    Args:
        hparams: a ``LoraEditConfig`` mapping (already merged with the model's values).
        spec: module templates.
        seed: with the case id, seeds the adapters' random initialisation.
        covariance, covariance_label: unused (accepted like every editor's).
    """

    schema = LoraEditConfig
    #: EasyEdit's LoRA baseline (hparams/LoRA, e.g. llama-7b.yaml, as audited in issue 23)
    published = Published(
        source="EasyEdit's LoRA baseline (hparams/LoRA/*.yaml): AdaLoRA on q_proj and v_proj "
               "of every layer, dropout 0.1, 70 steps, no early stop",
        fields={"kind": "adalora", "target": ["q_proj", "v_proj"], "layers": "all",
                "dropout": 0.1, "steps": 70, "loss_stop": None})
    #: ROME's FT-L baseline (kmeng01/rome, baselines/ft): one layer's MLP weights, L-inf bound
    published_ft_l = Published(
        source="Meng et al. 2022, FT-L baseline (kmeng01/rome baselines/ft): one layer's MLP "
               "weights, L-inf norm constraint 5e-4, Adam lr 5e-4, 25 steps",
        fields={"norm_constraint": 5e-4, "lr": 5e-4, "steps": 25},
        practice={"loss_and_clamp": "kmeng01/rome baselines/ft's loss position and clamping"})

    def published_setup(self):
        return self.published_ft_l if self.hp.kind == "full" else self.published

    def practice(self) -> dict[str, str]:
        if self.hp.kind == "full":  # not reproduced: ours is the target NLL after the prompt
            return {"loss_and_clamp": "target-token NLL after the prompt; clamp after every step"}
        return {}

    def __init__(self, hparams: Mapping[str, Any], spec: ModelSpec, seed: int = 0,
                 covariance: Callable[[int], torch.Tensor | None] | None = None,
                 covariance_label: str | None = None):
        super().__init__(hparams, spec, int(seed), covariance, covariance_label)
        self.hp = schema_from_mapping(LoraEditConfig, hparams)

    @property
    def edit_layers(self) -> list[int]:
        """Blocks whose weights an edit changes."""
        return sorted(int(l) for l in self.hp.layers)

    def module_path(self, layer: int) -> str:
        """Where ``target`` lives in block ``layer``."""
        t = self.hp.target
        template = getattr(self.spec, t, None) if t in ModelSpec.__dataclass_fields__ else None
        if template is not None and "{}" in template:
            return template.format(layer)
        if template is not None:
            raise ValueError(f"method.target={t!r}: model.templates.{t} is not inside a block")
        return f"{self.spec.layer.format(layer)}.{t}"

    def _targets(self, model: nn.Module) -> dict[str, nn.Module]:
        out = {}
        for layer in self.edit_layers:
            path = self.module_path(layer)
            try:
                m = model.get_submodule(path)
            except AttributeError:
                raise ValueError(f"method.target={self.hp.target!r}: the model has no module "
                                 f"{path!r}") from None
            if getattr(getattr(m, "weight", None), "ndim", 0) != 2:
                raise ValueError(f"method.target={self.hp.target!r}: {path!r} is a "
                                 f"{type(m).__name__}, not a linear projection")
            out[path] = m
        return out

    def edit(self, model: nn.Module, tok, request: EditRequest) -> EditOutcome:
        hp = self.hp
        t0 = time.perf_counter()
        rec = request.record
        prompt = rec.prompt + request.answer_prefix
        enc = encode(tok, prompt, rec.target_new, request.lang["word_sep"])
        ids = torch.tensor([enc.input_ids], device=model_device(model))
        targets = self._targets(model)
        was_training = model.training
        model.eval()  # no dropout in the model; LoRA's own dropout is switched on separately
        try:
            with trainable_only(model):  # peft freezes the base weights: give their flags back
                if hp.kind == "lora":
                    deltas, trace, tensors = self._train_lora(model, ids, enc, targets, request.case_id)
                else:
                    deltas, trace, tensors = self._train_full(model, ids, enc, targets)
        finally:
            model.train(was_training)
        params = dict(model.named_parameters())
        info = {
            "method": "lora", "kind": hp.kind, "edit_kind": "weights",
            "target": hp.target, "layers": self.edit_layers, "params": [d.param for d in deltas],
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
        if hp.kind == "lora":
            info.update(rank=hp.rank, alpha=hp.alpha, dropout=hp.dropout, scaling=hp.alpha / hp.rank)
        return EditOutcome(deltas=deltas, info=info, tensors={**tensors, "encoded": enc})

    # -------------------------------------------------------------- training loop
    def _fit(self, model, ids, enc, params: list[torch.Tensor], constrain) -> tuple[dict, torch.Tensor]:
        """Adam on ``params`` against the target NLL; ``constrain()`` after every step. Returns
        ({"nll": per forward, "steps": updates made}, the final target logits)."""
        hp = self.hp
        opt = torch.optim.Adam(params, lr=hp.lr)
        nlls, steps, final = [], 0, None
        with trainable_only(model, params):
            for _ in range(hp.steps):
                loss, logits = target_nll(model, ids, enc)
                value = float(loss.detach())
                nlls.append(value)
                if value != value or value in (float("inf"), float("-inf")):
                    raise FloatingPointError(f"target NLL is {value} after {steps} steps")
                if value < hp.loss_stop or (hp.stop_at_argmax and _all_top(logits, ids, enc)):
                    final = logits.detach()
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                with torch.no_grad():
                    constrain()
            if final is None:  # measure where the last update landed
                with torch.no_grad():
                    loss, final = target_nll(model, ids, enc)
                nlls.append(float(loss))
        return {"nll": nlls, "steps": steps}, final

    def _train_full(self, model, ids, enc, targets):
        """FT-L: train each target weight in place, clip W − W₀ to the L∞ ball after every
        step, return the change and restore W₀ exactly."""
        c = self.hp.norm_constraint
        weights = {path: m.weight for path, m in targets.items()}
        saved = {path: w.detach().clone() for path, w in weights.items()}

        def constrain():
            if c is not None:
                for path, w in weights.items():
                    w.copy_(saved[path] + clip_linf(w - saved[path], c))

        try:
            trace, logits = self._fit(model, ids, enc, list(weights.values()), constrain)
            with torch.no_grad():
                deltas = []
                for path, w in weights.items():
                    d = w.detach() - saved[path]
                    deltas.append(WeightDelta(f"{path}.weight", clip_linf(d, c) if c is not None else d))
        finally:
            with torch.no_grad():
                for path, w in weights.items():
                    w.copy_(saved[path])
        return deltas, trace, {"final_logits": logits}

    def _train_lora(self, model, ids, enc, targets, case_id: str):
        """LoRA through peft: inject adapters on the targets, train them, merge them into dense
        deltas, remove every peft module (also on error)."""
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel

        hp = self.hp
        transposed = {is_transposed(m) for m in targets.values()}
        if len(transposed) != 1:
            raise ValueError(f"method.target={hp.target!r}: mixes Conv1D and Linear layers")
        config = LoraConfig(r=hp.rank, lora_alpha=hp.alpha, lora_dropout=hp.dropout,
                            target_modules=list(targets), fan_in_fan_out=transposed.pop(),
                            bias="none", init_lora_weights=True)
        originals = dict(targets)
        # A's random init from (seed, case): the same edit whatever ran before it
        case_seed = (self.seed * 1_000_003 + zlib.crc32(str(case_id).encode())) % (2 ** 63)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(case_seed)
            tuner = LoraModel(model, config, ADAPTER)
        try:
            layers = {path: model.get_submodule(path) for path in targets}
            for m in layers.values():
                m.lora_dropout[ADAPTER].train(hp.dropout > 0)
            ab = [(m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight, float(m.scaling[ADAPTER]))
                  for m in layers.values()]

            def constrain():
                if hp.norm_constraint is None:
                    return
                for a, b, s in ab:  # shrink B until the merged change fits the L∞ ball
                    peak = float((s * (b.double() @ a.double())).abs().max())
                    if peak > hp.norm_constraint:
                        b.mul_(hp.norm_constraint / peak)

            trace, logits = self._fit(model, ids, enc, [t for a, b, _ in ab for t in (a, b)], constrain)
            adapters = {}
            deltas = []
            for (path, m), (a, b, s) in zip(layers.items(), ab):
                a, b = a.detach().clone(), b.detach().clone()
                w = originals[path].weight
                dw = lora_delta(a, b, s, is_transposed(originals[path]))
                deltas.append(WeightDelta(f"{path}.weight", dw.to(dtype=w.dtype, device=w.device)))
                adapters[f"{path}.weight"] = {"A": a, "B": b, "scaling": s}
        finally:
            tuner.unload()  # puts every original module back, drops model.peft_config
        left = [n for n, m in model.named_modules() if type(m).__module__.startswith("peft.")]
        if left or any(model.get_submodule(p) is not m for p, m in originals.items()):
            raise RuntimeError(f"peft modules left in the model after the edit: {left[:5]}")
        return deltas, trace, {"final_logits": logits, "adapters": adapters}
