"""What ROME and MEMIT share: tokenised edit requests, keys, and the value optimisation.

The value optimisation (ROME's ``compute_v``, MEMIT's ``compute_z``) adds a vector delta to a
hidden state at the subject's last token of every context prompt and of the KL prompt
"{subject} is a", and minimises, as published,

    mean over prompts of the mean token NLL of target_new
      +  kl_factor · KL(p_now || p_before)   (next-token distribution at the subject's last
                                              token of the KL prompt)
      +  weight_decay · |delta| / |v0|²,

with Adam; after every step delta is projected into the ball of radius
clamp_norm_factor · |v0|, and the loop stops once the **total** loss is below ``loss_stop``
(the last of ``steps`` forwards only measures). Where delta lives (``space``):

- ``mlp_out``: the MLP output projection's output (published ROME); v0 = that output;
- ``residual``: the residual stream after the block (published MEMIT); v0 = the block's output.

Where the loop starts is ``v_init`` (:func:`optimise_values`): delta = 0 as published, or a
labelled deviation (``bare``: a warm-up on the bare prompt alone).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import List, Sequence

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from xling_edit.editing.base import EditRequest, SkipCase
from xling_edit.editing.localize import DEFAULT_FALLBACK, SubjectMatch, check_fallback, find_subject
from xling_edit.evaluation.forward import (
    _StopForward, capture_output, full_logits_at, logits_at, pad_right, skip_below,
)
from xling_edit.evaluation.prefix import (
    cache_holding, cache_kwarg as _cache_kwarg, empty_cache, layer_kv as _layer_kv,
    prefix_cache_unsupported,
)
from xling_edit.evaluation.text import Encoded, encode, last_token_in_span
from xling_edit.models.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass
class EditMethodConfig:
    """What ROME and MEMIT share: the value optimisation, the context prefixes, statistics,
    localisation and the editing mode. Defaults are the published values (Meng et al. 2022 /
    2023; the Llama-2-7B settings where the papers' models differ); a field set to another value
    is listed under ``edit.deviations`` in every results line.

    Args:
        name: method name in the editor registry.
        variant: a label for this configuration (``published`` for the method files;
            ``conf/method/rome_fast.yaml`` says ``fast``); recorded in every results line and
            summary row.
        v_steps: forwards of the value optimisation (the last only measures, as published: at
            most ``v_steps - 1`` Adam updates).
        v_lr: Adam learning rate of the value optimisation.
        v_loss_stop: stop early once the **total** loss (NLL + KL + weight decay) is below this
            (published: 0.05).
        clamp_norm_factor: delta is kept inside a ball of radius factor * ||v0|| (v0: the hidden
            state delta is added to; see ``MemitConfig.z_space``).
        kl_factor: weight of KL(p_now || p_before) on "{subject} is a", read at the subject's
            last token.
        weight_decay: weight of ||delta|| / ||v0||^2.
        context_templates: ``[[length, count], ...]``: groups of model-generated context
            prefixes (``count`` samples of ``length`` tokens, seed word included) placed before
            the prompt; the bare prompt always comes first. Published ROME ``[[5, 10], [10, 10]]``
            (21 prompts), MEMIT ``[[10, 5]]`` (6 prompts).
        key_average: how the key is averaged over the prompts: ``prompts`` (uniform over all,
            published ROME) or ``templates`` (mean within each template group, the bare prompt
            being its own group, then the mean of the groups: published MEMIT's ½ bare prompt,
            ½ prefixed prompts).
        use_covariance: use the second-moment statistics C (the published methods) when they
            are available; otherwise the identity is used and results say so.
        subject_match_threshold: subject localisation (editing/localize.py): the similarity
            every non-identical subject word must reach with its prompt counterpart (difflib
            ratio of spellings, or of consonant skeletons across scripts); higher skips more
            cases rather than read the key at a wrong token.
        subject_fallback: when localisation tries its language-independent pass
            (editing/localize.py, ``span``: a prompt word that is the subject word plus a short
            tail, found without any ``morphology``) after the exact, normalised, fuzzy and
            transliterated steps found nothing: ``none`` (default), ``no_morphology`` (only for
            an edit language whose file declares no ``morphology``: a new language's inflected
            subjects are found before its rules are written) or ``span`` (every language).
            Off by default: measured on the labelled fixtures (docs/methods.md), it raises
            Bengali/Marathi recall 0.89 → 1.00 after the declared rules but lowers precision
            0.94 → 0.90 (derived adjectives), and the languages without rules today (en, fr,
            it, es) gain 1 localisation of 4,123 while 13 more of 26 English demonyms
            ("Jordanian" for "Jordan") would be taken. With the rules removed it lifts
            Bengali/Marathi recall 0.24 → 0.89 (precision 0.81 → 0.89): ``no_morphology`` is
            for a language added before its rules. A case it localises records
            ``subject_match: span`` in ``edit.deviations``.
        mode: ``single`` (one case per edit, restored after each), ``sequential``
            (``num_edits`` cases edited one after another without restoring, all evaluated
            after the last), ``batch`` (``num_edits`` cases in one update) or
            ``all_languages`` (one update holding the case's request in every evaluation
            language). ``batch`` and ``all_languages`` need a method that edits many facts at
            once (MEMIT).
        num_edits: cases per group in ``batch`` and ``sequential`` modes.
        eval_every: ``sequential`` only: after every ``eval_every`` edits (and after the last)
            score the edits made so far and the held-out cases with all edits in place, in
            every evaluation language: the stability curve (``curve.jsonl``, drawn by the
            report). 0: no curve.
        heldout: ``sequential`` only: the last ``heldout`` cases of the dataset are never
            edited; the curve tracks their locality and their own facts (``fact.*``).
        v_init: where the value optimisation starts (xling_edit/editing/value.py). ``zero``
            (published): Adam from delta = 0. ``bare``: first the same optimisation on the bare
            prompt and the KL prompt alone (2 rows instead of every context prompt; stopped at
            ``v_loss_stop``), then the published loop on every prompt from that delta, Adam's
            moments carried over. Measured on Gemma-3-270M, 10 BMIKE-53 English cases
            (bench/value_init.py): ROME's full loop 5.0 forwards (median 3) instead of 12.5,
            plus 14 warm-up forwards on 2 rows; 44 s instead of 77 s per case (median 34 vs 77;
            one case of 10 slower); same final NLL; its delta at cosine 0.90 from the published
            start's. (A third start, a line search along the first gradient, saved nothing
            there — 14.2 steps, 96 s — and was removed.) The warm-up's forwards are recorded
            as ``edit.init_forwards`` (outside ``edit.steps``).
    """

    name: str = MISSING
    variant: str = "published"
    v_steps: int = 25
    v_lr: float = 0.5
    v_loss_stop: float = 0.05
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    weight_decay: float = 1.0e-3
    context_templates: List[List[int]] = field(default_factory=lambda: [[5, 10], [10, 10]])
    key_average: str = "prompts"
    use_covariance: bool = True
    subject_match_threshold: float = 0.8
    subject_fallback: str = DEFAULT_FALLBACK
    mode: str = "single"
    num_edits: int = 1
    eval_every: int = 0
    heldout: int = 0
    v_init: str = "zero"

    def __post_init__(self):  # an unknown value fails when the editor is built, before any case
        check_v_init(self.v_init)
        check_fallback(self.subject_fallback)


@dataclass
class Prepared:
    """One request tokenised for editing: context prompts + target, and the KL prompt."""

    match: SubjectMatch
    encs: list[Encoded]  # prefix + prompt + target_new, one per context prefix ("" first)
    ids: torch.Tensor  # [n_prompts + 1, T] right-padded; the last row is the KL prompt
    mask: torch.Tensor
    subj_pos: torch.Tensor  # [n_prompts + 1] subject's last token per row
    rows: torch.Tensor  # logit rows: target positions of every prompt, then the KL position
    pos: torch.Tensor
    tgt: torch.Tensor  # target token ids at those positions (KL excluded)
    seg: torch.Tensor  # which prompt each target token belongs to
    n_tok: torch.Tensor  # target tokens per prompt
    prompts: list[str]  # prefix + prompt (+ answer prefix), without the target; then the KL prompt

    @property
    def n_prompts(self) -> int:
        return len(self.encs)


def locate_subject(request: EditRequest, threshold: float,
                   fallback: str = DEFAULT_FALLBACK) -> SubjectMatch:
    """Where ``request``'s subject sits in its prompt (:func:`find_subject` in the request's
    language); :class:`SkipCase` when it cannot be found."""
    rec = request.record
    match = find_subject(rec.prompt, rec.subject, threshold, lang=str(request.lang["code"]),
                         fallback=fallback)
    if match is None:
        raise SkipCase(f"subject {rec.subject!r} not found in prompt {rec.prompt!r}")
    return match


def prepare(tok, request: EditRequest, prefixes: list[str], threshold: float, device,
            fallback: str = DEFAULT_FALLBACK) -> Prepared:
    """``request`` tokenised for editing; ``threshold`` and ``fallback``: subject localisation
    (``subject_match_threshold``, ``subject_fallback``)."""
    rec, lang = request.record, request.lang
    match = locate_subject(request, threshold, fallback)
    prompt = rec.prompt + request.answer_prefix
    encs, subj = [], []
    for pre in prefixes:
        e = encode(tok, pre + prompt, rec.target_new, lang["word_sep"])
        p = last_token_in_span(e, len(pre) + match.start, len(pre) + match.end)
        if p >= e.n_prompt:
            raise SkipCase("subject overlaps the target tokens")
        encs.append(e)
        subj.append(p)
    kl_text = lang["kl_prompt"].format(subject=rec.subject)
    kl_enc = encode(tok, kl_text)
    ks = kl_text.find(rec.subject)
    kl_subj = last_token_in_span(kl_enc, ks, ks + len(rec.subject))
    subj.append(kl_subj)
    ids, mask = pad_right([e.input_ids for e in encs] + [kl_enc.input_ids], tok.pad_token_id, device)
    rows, pos, tgt, seg = [], [], [], []
    for r, e in enumerate(encs):
        for p in e.target_positions:
            rows.append(r)
            pos.append(p - 1)
            tgt.append(e.input_ids[p])
            seg.append(r)
    # Published compute_v / compute_z read the KL distribution at the subject's last token of
    # the KL prompt (not at the prompt's last token).
    rows.append(len(encs))
    pos.append(kl_subj)
    t = lambda x: torch.tensor(x, device=device)  # noqa: E731
    seg_t = t(seg)
    return Prepared(match, encs, ids, mask, t(subj), t(rows), t(pos), t(tgt), seg_t,
                    torch.bincount(seg_t, minlength=len(encs)).float(),
                    [pre + prompt for pre in prefixes] + [kl_text])


def average_keys(keys: torch.Tensor, groups: Sequence[int] | None) -> torch.Tensor:
    """Mean key over the context prompts ([n_prompts, d] -> [d]).

    ``groups`` None: uniform over all prompts (published ROME). Otherwise the prompts' context
    template groups (the bare prompt is group 0): mean within each group, then the mean of the
    group means (published MEMIT: ½ bare prompt, ½ mean of the prefixed prompts)."""
    if groups is None:
        return keys.mean(0)
    g = torch.as_tensor(list(groups), device=keys.device)
    if g.numel() != keys.shape[0]:
        raise ValueError(f"{keys.shape[0]} keys but {g.numel()} group labels")
    return torch.stack([keys[g == i].mean(0) for i in torch.unique(g)]).mean(0)


def target_nll(logits: torch.Tensor, prep: Prepared) -> torch.Tensor:
    """Mean over prompts of the mean token NLL of the target (``logits`` without the KL row)."""
    lp = torch.log_softmax(logits, dim=-1).gather(1, prep.tgt[:, None])[:, 0]
    per_prompt = torch.zeros_like(prep.n_tok).index_add(0, prep.seg, -lp)
    return (per_prompt / prep.n_tok).mean()


@torch.no_grad()
def probe_at_subject(model, spec: ModelSpec, prep: Prepared, layer: int, top: int,
                     bare_only: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass, stopped after block ``top`` (>= ``layer``), returning

    - the down-projection's inputs (keys) at ``layer``, [rows, d_in], and
    - its outputs, [rows, d_out], at the subject's last token of every row (only the bare
      prompt's row with ``bare_only``), and
    - the residual stream after block ``top`` at the bare prompt's subject, [d_model] (float64).
    """
    n = 1 if bare_only else prep.ids.shape[0]
    rows = torch.arange(n, device=prep.ids.device)
    pos = prep.subj_pos[:n]
    got: dict = {}

    def at_down(_m, inp, out):
        got["k"], got["v"] = inp[0][rows, pos].float(), out[rows, pos].float()

    def at_top(_m, _i, out):
        got["h"] = (out[0] if isinstance(out, tuple) else out)[0, pos[0]].double()
        raise _StopForward

    handles = [spec.module(model, "down_proj", layer).register_forward_hook(at_down),
               spec.module(model, "layer", top).register_forward_hook(at_top)]
    try:
        model(input_ids=prep.ids[:n], attention_mask=prep.mask[:n], use_cache=False, logits_to_keep=1)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return got["k"], got["v"], got["h"]


@dataclass
class ValueResult:
    delta: torch.Tensor  # optimised addition at the subject (in ``space``)
    v0: torch.Tensor  # the bare prompt's hidden state there (what delta is measured against)
    keys: torch.Tensor  # [n_prompts, d_in] the layer's projection inputs at the subject, per prompt
    nll_before: float
    trajectory: list[float]  # mean target NLL at every forward
    steps: int  # forwards run (the last one only measures, as published)
    loss_trajectory: list[float] = field(default_factory=list)  # total loss at every forward
    space: str = "mlp_out"
    init: str = "zero"  # v_init
    # forwards outside ``steps``: bare, the warm-up's forwards (bare prompt + KL prompt,
    # forward and backward)
    init_forwards: int = 0
    init_losses: list[float] = field(default_factory=list)  # total loss at each of them
    prefix_cached: bool = False  # the steps ran the suffix only, on the cached prefix (prefix_cache)


SPACES = ("mlp_out", "residual")
#: where the value optimisation starts (``v_init``; :func:`optimise_values`): ``zero`` is published
V_INITS = ("zero", "bare")


def optimise_value(model, spec: ModelSpec, layer: int, prep: Prepared, **options) -> ValueResult:
    """Optimise delta for one request (:func:`optimise_values` with a single request)."""
    return optimise_values(model, spec, layer, [prep], **options)[0]


@dataclass
class _Stack:
    """Several requests' prompts (context prompts, then the KL prompt, per request) as one
    right-padded batch."""

    ids: torch.Tensor  # [R, T]
    mask: torch.Tensor
    row_req: torch.Tensor  # [R] request (local index) of each row
    subj_pos: torch.Tensor  # [R] subject's last token of each row
    bare_row: torch.Tensor  # [n] each request's bare-prompt row
    prompt_rows: list[torch.Tensor]  # per request: its context-prompt rows
    rows: torch.Tensor  # logit rows: every target position, then one KL row per request
    pos: torch.Tensor
    tgt: torch.Tensor  # target ids at the target positions
    seg: torch.Tensor  # global prompt index of each target position
    n_tok: torch.Tensor  # [P] target tokens per prompt
    prompt_req: torch.Tensor  # [P] request of each prompt
    n_prompts: torch.Tensor  # [n] prompts per request


def _stack(preps: Sequence[Prepared]) -> _Stack:
    device = preps[0].ids.device
    seqs, row_req, subj, bare, prompt_rows = [], [], [], [], []
    rows, pos, tgt, seg, n_tok, prompt_req, kl_rows, kl_pos = [], [], [], [], [], [], [], []
    r0 = p0 = 0
    for i, p in enumerate(preps):
        n_rows = p.ids.shape[0]  # prompts + the KL prompt
        lengths = p.mask.sum(1).tolist()
        seqs += [p.ids[r, :int(lengths[r])].tolist() for r in range(n_rows)]
        row_req += [i] * n_rows
        subj += p.subj_pos.tolist()
        bare.append(r0)
        prompt_rows.append(torch.arange(r0, r0 + p.n_prompts, device=device))
        n_t = len(p.tgt)
        rows += (p.rows[:n_t] + r0).tolist()
        pos += p.pos[:n_t].tolist()
        tgt += p.tgt.tolist()
        seg += (p.seg + p0).tolist()
        n_tok += p.n_tok.tolist()
        prompt_req += [i] * p.n_prompts
        kl_rows.append(int(p.rows[-1]) + r0)
        kl_pos.append(int(p.pos[-1]))
        r0 += n_rows
        p0 += p.n_prompts
    ids, mask = pad_right(seqs, 0, device)  # padding is masked: any id serves
    t = lambda x, **kw: torch.tensor(x, device=device, **kw)  # noqa: E731
    return _Stack(ids, mask, t(row_req), t(subj), t(bare), prompt_rows, t(rows + kl_rows),
                  t(pos + kl_pos), t(tgt), t(seg), t(n_tok, dtype=torch.float32), t(prompt_req),
                  t([p.n_prompts for p in preps], dtype=torch.float32))


def _per_request_nll(logits: torch.Tensor, st: _Stack) -> torch.Tensor:
    """[n] mean over each request's prompts of the mean token NLL of its target."""
    lp = torch.log_softmax(logits, dim=-1).gather(1, st.tgt[:, None])[:, 0]
    per_prompt = torch.zeros_like(st.n_tok).index_add(0, st.seg, -lp) / st.n_tok
    return torch.zeros_like(st.n_prompts).index_add(0, st.prompt_req, per_prompt) / st.n_prompts


def check_v_init(init: str) -> None:
    """Raise ValueError unless ``init`` is one of :data:`V_INITS`."""
    if init not in V_INITS:
        raise ValueError(f"v_init={init!r} unknown; one of {list(V_INITS)}")


def optimise_values(model, spec: ModelSpec, layer: int, preps: Sequence[Prepared], *,
                    init: str = "zero", **opts) -> list[ValueResult]:
    """Optimise every request's delta at block ``layer`` (module docstring; the loop and its
    options ``opts``: :func:`_optimise`). ``init`` (``v_init``) chooses the start: ``zero``
    (published) or ``bare``: the same optimisation on each request's bare prompt and KL prompt
    alone (2 rows instead of ``n_prompts + 1``) until its total loss is below ``loss_stop`` (at
    most ``steps`` forwards), then the published loop on every prompt from that delta, Adam's
    moments carried over. The warm-up's forwards are ``init_forwards`` (its losses
    ``init_losses``), not ``steps``."""
    check_v_init(init)
    if init != "bare":
        return _optimise(model, spec, layer, preps, **opts)[0]
    warm, state = _optimise(model, spec, layer, [bare_only(p) for p in preps], **opts)
    out, _ = _optimise(model, spec, layer, preps, start=torch.stack([w.delta for w in warm]),
                       adam_state=state, **opts)
    for o, w in zip(out, warm):
        o.init, o.init_forwards, o.init_losses = "bare", w.steps, w.loss_trajectory
    return out


def bare_only(prep: Prepared) -> Prepared:
    """``prep`` with its bare prompt and KL prompt only (``v_init=bare``'s warm-up)."""
    n_t = len(prep.tgt)
    first = prep.seg == 0  # the bare prompt's target positions come first
    k = int(first.sum())
    if not bool(first[:k].all()):
        raise ValueError("the bare prompt's target positions must come first")
    rows = torch.cat([prep.rows[:k], prep.rows.new_ones(1)])  # the KL prompt becomes row 1
    pos = torch.cat([prep.pos[:k], prep.pos[n_t:]])
    keep = prep.ids.new_tensor([0, prep.ids.shape[0] - 1])
    mask = prep.mask[keep]
    width = int(mask.sum(1).max())
    return Prepared(prep.match, prep.encs[:1], prep.ids[keep, :width], mask[:, :width],
                    prep.subj_pos[keep], rows, pos, prep.tgt[:k], prep.seg[:k], prep.n_tok[:1],
                    [prep.prompts[0], prep.prompts[-1]])


def _optimise(model, spec: ModelSpec, layer: int, preps: Sequence[Prepared], *, steps: int,
              lr: float, loss_stop: float, clamp_norm_factor: float, kl_factor: float,
              weight_decay: float, space: str = "mlp_out", from_layer: bool = True,
              head_at_targets: bool = True, prefix_cache: bool = True,
              start: torch.Tensor | None = None,
              adam_state: dict | None = None) -> tuple[list[ValueResult], dict]:
    """Optimise every request's delta at block ``layer`` (module docstring) in one padded
    forward/backward per step; ``space`` is ``mlp_out`` (the down-projection's output) or
    ``residual`` (the block's output).

    The requests' rows are independent sequences and the loss is the sum of the requests'
    losses, so each delta gets exactly its own gradient, and Adam, being elementwise, gives each
    the trajectory of a separate optimisation. A request stops on its own (total loss below
    ``loss_stop``, or its last forward): its delta is frozen and its rows leave the batch.

    Fast paths (same loss trajectory; the oracle tests compare them with a plain form):

    - ``from_layer``: delta enters at block ``layer``, so blocks below it compute the same thing
      at every step; their output is computed once and each step runs blocks ``layer`` and up
      only (plain: the full depth every step).
    - ``head_at_targets``: the forward stops after the final norm and the LM head is applied at
      the target and KL positions only (plain: full logits at every position).
    - ``prefix_cache``: delta enters at each row's subject's last token, and attention is causal,
      so every position before it (the row's prefix) computes the same thing in every block at
      every step. The first forward records every block's keys and values; each step then runs
      only the positions from the subject's last token on, attending to the recorded prefix
      (:class:`_Suffix`; plain: every position of every prompt). Models the cache cannot serve
      (:func:`prefix_cache_unsupported`) run the plain form, said once in the log.
    """
    if space not in SPACES:
        raise ValueError(f"value space {space!r} unknown; one of {list(SPACES)}")
    n = len(preps)
    down = spec.module(model, "down_proj", layer)
    site = down if space == "mlp_out" else spec.module(model, "layer", layer)
    st = _stack(preps)
    first = layer if (from_layer and layer > 0) else 0  # the lowest block each step runs
    record = _recording_cache(model) if prefix_cache else None
    cap: dict = {}
    hk = down.register_forward_hook(lambda m, i, o: cap.update(k=i[0]))
    hv = site.register_forward_hook(lambda m, i, o: cap.update(v=o[0] if isinstance(o, tuple) else o))
    below = capture_output(spec.module(model, "layer", layer - 1)) if first else None
    try:
        with torch.no_grad(), (below if below is not None else nullcontext()) as low:
            logits0 = _stack_logits(model, spec, st, head_at_targets, record)
    finally:
        hk.remove()
        hv.remove()
    lower = low["out"].detach() if below is not None else None
    kv = _recorded_kv(model, spec, record, st, first) if record is not None else None
    del record
    keys = [cap["k"][r, st.subj_pos[r]].detach().float() for r in st.prompt_rows]
    v0 = cap["v"][st.bare_row, st.subj_pos[st.bare_row]].detach().float()  # [n, d]
    n_t = len(st.tgt)
    kl_before = torch.log_softmax(logits0[n_t:], dim=-1)  # [n, V]
    nll0 = _per_request_nll(logits0[:n_t], st).tolist()
    del logits0
    cap.clear()

    if start is None:
        delta = torch.zeros_like(v0, requires_grad=True)
    else:  # v_init=bare: the warm-up's delta, and its Adam moments
        delta = start.detach().to(v0).clone().requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=lr)
    if adam_state:
        opt.state[delta] = {k: v.clone() for k, v in adam_state.items()}
    v0_norm = v0.norm(dim=1)
    radius = clamp_norm_factor * v0_norm
    trajectory: list[list[float]] = [[] for _ in range(n)]
    losses: list[list[float]] = [[] for _ in range(n)]
    done_steps = [0] * n
    # the live batch: its requests, their rows (full prompts), and what each step runs
    cur = {"st": st, "lower": lower, "ids": torch.arange(n, device=v0.device), "suffix": None}
    if kv is not None:
        try:
            cur["suffix"] = _suffix(st, torch.arange(st.ids.shape[0], device=v0.device), kv, lower)
        except ValueError as exc:  # a logit read before its row's subject: no prefix to reuse
            _fall_back(model, str(exc))
            kv = None

    def run_stack() -> _Stack:
        """The rows each step runs: the suffixes (prefix cache) or the whole prompts."""
        return cur["suffix"].st if cur["suffix"] is not None else cur["st"]

    def total_loss(s: _Stack, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[len(ids)] total loss and mean target NLL of the requests ``ids`` (batch ``s``)
        with delta added."""
        suf = cur["suffix"]
        if suf is not None:
            with skip_below(model, spec, first, suf.lower):
                logits = _suffix_logits(model, spec, suf, head_at_targets)
        else:
            with skip_below(model, spec, first if cur["lower"] is not None else 0, cur["lower"]):
                logits = _stack_logits(model, spec, s, head_at_targets)
        m = len(s.tgt)
        nll = _per_request_nll(logits[:m], s)
        kl_now = torch.log_softmax(logits[m:], dim=-1)
        # KL(p_now || p_before) per request, as published (F.kl_div's target is p_now)
        kl = F.kl_div(kl_before[ids], kl_now, log_target=True, reduction="none").sum(-1)
        return nll + kl_factor * kl + weight_decay * delta[ids].norm(dim=1) / v0_norm[ids] ** 2, nll

    def add_delta(_m, _i, o):
        s = run_stack()
        h = o[0] if isinstance(o, tuple) else o
        add = torch.zeros(h.shape[0], h.shape[1], h.shape[2], dtype=h.dtype, device=h.device)
        rows = torch.arange(h.shape[0], device=h.device)
        add = add.index_put((rows, s.subj_pos), delta[cur["ids"][s.row_req]].to(h.dtype))
        return (h + add,) + tuple(o[1:]) if isinstance(o, tuple) else h + add

    handle = site.register_forward_hook(add_delta)
    try:
        for step in range(1, steps + 1):
            s, ids = cur["st"], cur["ids"]
            loss, nll = total_loss(s, ids)
            if not torch.isfinite(loss).all():
                bad = [preps[int(ids[j])] for j in range(len(ids)) if not torch.isfinite(loss[j])]
                raise FloatingPointError(f"non-finite value loss at step {step} "
                                         f"({len(bad)} of {len(ids)} requests)")
            vals, nlls = loss.detach().tolist(), nll.detach().tolist()
            keep = []
            for j, g in enumerate(ids.tolist()):
                trajectory[g].append(nlls[j])
                losses[g].append(vals[j])
                done_steps[g] = step
                if not (vals[j] < loss_stop or step == steps):
                    keep.append(j)
            if not keep:
                break
            upd = ids[keep]
            opt.zero_grad(set_to_none=True)
            loss[keep].sum().backward()
            saved = delta.detach().clone()
            opt.step()
            with torch.no_grad():
                frozen = torch.ones(n, dtype=torch.bool, device=delta.device)
                frozen[upd] = False
                delta[frozen] = saved[frozen]  # finished requests keep their delta
                norms = delta[upd].norm(dim=1)
                scale = torch.where(norms > radius[upd], radius[upd] / norms, torch.ones_like(norms))
                delta[upd] = delta[upd] * scale[:, None]
            del nll, loss
            if len(keep) < len(ids):  # some requests finished: their rows leave the batch
                sub = [int(ids[j]) for j in keep]
                cur["st"] = _stack([preps[g] for g in sub])
                cur["ids"] = torch.tensor(sub, device=v0.device)
                rows = torch.cat([st.prompt_rows[g].new_tensor(
                    list(range(int(st.bare_row[g]), int(st.bare_row[g]) + preps[g].ids.shape[0])))
                    for g in sub])
                if lower is not None:
                    cur["lower"] = lower[rows, :cur["st"].ids.shape[1]]
                if kv is not None:
                    cur["suffix"] = _suffix(cur["st"], rows, kv, lower)
    finally:
        handle.remove()
    return [ValueResult(delta[i].detach().clone(), v0[i], keys[i], nll0[i], trajectory[i],
                        done_steps[i], losses[i], space, prefix_cached=kv is not None)
            for i in range(n)], dict(opt.state[delta])


def _stack_logits(model, spec: ModelSpec, st: _Stack, head_at_targets: bool,
                  record=None) -> torch.Tensor:
    """Logits at ``st.rows`` / ``st.pos`` of the whole prompts; ``record``: a cache the forward
    fills with every block's keys and values (the prefix cache's first forward)."""
    kw = {} if record is None else {"use_cache": True, _cache_kwarg(model): record}
    return _logits(model, spec, st, head_at_targets, attention_mask=st.mask, **kw)


# ------------------------------------------------------------------ prefix cache
_FALLBACK_LOGGED: set = set()


def _fall_back(model, why: str) -> None:
    key = (type(model).__name__, why)
    if key not in _FALLBACK_LOGGED:
        _FALLBACK_LOGGED.add(key)
        log.warning("value optimisation: no prefix cache on %s (%s); each step runs every position "
                    "of every prompt", type(model).__name__, why)


def _recording_cache(model):
    """An empty cache for the first forward to record every block's keys and values in, or None
    (logged once) where the model cannot use one."""
    why = prefix_cache_unsupported(model)
    if why is not None:
        _fall_back(model, why)
        return None
    return empty_cache()


def _recorded_kv(model, spec: ModelSpec, cache, st: _Stack, first: int):
    """Every block's recorded keys and values from ``first`` up ([R, heads, T, d] each; None
    below ``first``), or None (logged once) when the cache did not record them all."""
    n_blocks = spec.n_layers(model)
    r, t = st.ids.shape
    out: list = [None] * n_blocks
    for i in range(first, n_blocks):
        k, v = _layer_kv(cache, i)
        if (k is None or v is None or k.dim() != 4 or v.dim() != 4 or k.shape[0] != r
                or v.shape[0] != r or k.shape[2] != t or v.shape[2] != t):
            shape = None if k is None else tuple(k.shape)
            _fall_back(model, f"the cache recorded no [{r}, heads, {t}, d] keys for block {i} "
                              f"(got {shape})")
            return None
        out[i] = (k.detach(), v.detach())
    return out


@dataclass
class _Suffix:
    """A batch of whole prompts (:class:`_Stack`) cut at each row's subject's last token: the
    suffix (that token and every later one) is what a step runs; the prefix (every earlier
    position) is the recorded keys and values of every block, identical at every step.

    Row r's prefix is right-aligned: its ``p_r`` positions fill the last ``p_r`` of ``P`` cache
    slots (the first ``P - p_r`` are masked), and its suffix takes slots ``P ..``. Every real
    position sits at a constant offset from its position in the prompt, so causal and
    sliding-window masks, computed from slot distances, are those of the whole prompt; the
    position ids (rotary / learned positions) are the prompt's."""

    st: _Stack  # suffix rows: ids from the subject's last token on, subj_pos 0, pos shifted
    mask: torch.Tensor  # [R, P + S]: the prefix slots, then the suffix
    position_ids: torch.Tensor  # [R, S]: each suffix token's position in its prompt
    kv: list | None  # per block: (keys, values) [R, heads, P, d] (None below the first block run)
    lower: torch.Tensor | None  # [R, S, d_model]: what enters the first block run, at the suffix

    def cache(self):
        """A fresh cache holding the prefix (a forward appends the suffix to it)."""
        real = next(e for e in self.kv if e is not None)[0]
        r, p = self.mask.shape[0], self.mask.shape[1] - self.st.ids.shape[1]
        dummy = real.new_zeros(()).expand(r, 1, p, 1)  # blocks not run: only their length is read
        return cache_holding([e if e is not None else (dummy, dummy) for e in self.kv])


def _suffix(st: _Stack, src: torch.Tensor, kv: list, lower: torch.Tensor | None) -> _Suffix:
    """``st`` cut at each row's subject's last token. ``src``: each row's row in the batch the
    cache ``kv`` (and ``lower``, the hidden states entering the first block run) was recorded
    on; positions are the same in both (right-padded)."""
    device = st.ids.device
    subj = st.subj_pos
    lens = st.mask.sum(1)
    t = st.ids.shape[1]
    n_pre, n_suf = int(subj.max()), int((lens - subj).max())
    pos = st.pos - subj[st.rows]
    if bool((pos < 0).any()):
        raise ValueError("a logit position precedes its row's subject")
    j = torch.arange(n_suf, device=device)
    spos = subj[:, None] + j
    smask = spos < lens[:, None]
    spos = spos.clamp_max(t - 1)  # padding: any position serves, it is masked
    suf = _Stack(st.ids.gather(1, spos), smask.long(), st.row_req, torch.zeros_like(subj),
                 st.bare_row, st.prompt_rows, st.rows, pos, st.tgt, st.seg, st.n_tok,
                 st.prompt_req, st.n_prompts)
    sub_lower = None
    if lower is not None:
        sub_lower = lower[src].gather(1, spos[..., None].expand(-1, -1, lower.shape[-1]))
    if n_pre == 0:  # nothing before any subject: the suffix is the whole batch
        return _Suffix(suf, smask.long(), spos, None, sub_lower)
    slot = torch.arange(n_pre, device=device) - (n_pre - subj[:, None])  # [R, P] prompt position
    valid = slot >= 0
    slot = slot.clamp_min(0)
    keep = ~valid[:, None, :, None]
    pre = []
    for e in kv:
        if e is None:
            pre.append(None)
            continue
        k, v = e[0][src], e[1][src]
        ik = slot[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        iv = slot[:, None, :, None].expand(-1, v.shape[1], -1, v.shape[3])
        pre.append((k.gather(2, ik).masked_fill(keep, 0), v.gather(2, iv).masked_fill(keep, 0)))
    return _Suffix(suf, torch.cat([valid, smask], 1).long(), spos, pre, sub_lower)


def _suffix_logits(model, spec: ModelSpec, suf: _Suffix, head_at_targets: bool) -> torch.Tensor:
    """Logits at the suffix batch's target and KL positions, attending to the cached prefix."""
    kw: dict = dict(attention_mask=suf.mask, position_ids=suf.position_ids)
    if suf.kv is not None:
        kw.update({_cache_kwarg(model): suf.cache(), "use_cache": True})
    return _logits(model, spec, suf.st, head_at_targets, **kw)


def _logits(model, spec: ModelSpec, st: _Stack, head_at_targets: bool, attention_mask,
            **kw) -> torch.Tensor:
    """:func:`logits_at` / :func:`full_logits_at` at ``st``'s positions, with extra forward
    arguments ``kw`` (a cache, position ids)."""
    if head_at_targets:
        return logits_at(model, spec, st.ids, attention_mask, st.rows, st.pos, **kw)
    return full_logits_at(model, st.ids, attention_mask, st.rows, st.pos, **kw)


def value_options(hp, space: str = "mlp_out", paths=None) -> dict:
    """:func:`optimise_value`'s settings from a method config (``RomeConfig`` / ``MemitConfig``)
    and the editor's fast paths (:class:`xling_edit.fastpaths.EditPaths`; default: all on);
    ``init`` is checked where it is used (:func:`optimise_values`, the editors' constructors)."""
    from xling_edit.fastpaths import EditPaths

    paths = paths or EditPaths()
    return dict(steps=hp.v_steps, lr=hp.v_lr, loss_stop=hp.v_loss_stop,
                clamp_norm_factor=hp.clamp_norm_factor, kl_factor=hp.kl_factor,
                weight_decay=hp.weight_decay, space=space, from_layer=paths.v_from_layer,
                head_at_targets=paths.v_head_at_targets, prefix_cache=paths.v_prefix_cache,
                init=hp.v_init)


def project_to_ball(x: torch.Tensor, radius: float) -> torch.Tensor:
    n = x.norm()
    return x * (radius / n) if n > radius else x
