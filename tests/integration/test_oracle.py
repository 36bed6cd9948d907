"""Production ROME and MEMIT agree with the plain reference oracle (tests/oracle/plain_editing.py).

On the three tiny random architectures (Llama, GPT-2 with Conv1D projections, Gemma-3 with its
post-feed-forward norm), production's editors and the oracle get the same request, the same
context prefixes (production's, seeded), the same hyperparameters and the same covariance; they
must give the same subject position and key for every prompt, the same loss trajectory, and the
same ΔW (relative error below 1e-4). Production batches the prompts (right padding) and takes
fast paths (lower blocks computed once, LM head at the scored positions only, cached Cholesky
factors of C); the oracle runs one full forward per prompt. The remaining differences are float
rounding.

Hyperparameters: published where that keeps the comparison sensitive and well conditioned.
``kl_factor`` is 1.0 rather than the published 0.0625: a random tiny model's next-token
distribution hardly moves under an edit, and at 0.0625 the KL term is below the comparison
tolerance (a KL read at the wrong token or in the wrong direction would go unnoticed). MEMIT's
``weight_decay`` is 1e-3 rather than the published 0.5: the term is 0.5 · ‖δ‖/‖h‖², and with
the tiny models' ‖h‖ ≈ 0.2-0.3 its gradient is ~1000× the NLL's, so δ is set by the few
components with a near-zero NLL gradient, where Adam's per-component normalisation amplifies
float32 rounding (measured: δ differing by 6e-4 between two correct implementations).
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import language
from tests.oracle import plain_editing as pe
from xling_edit.editing.memit import MemitConfig
from xling_edit.editing.rome import RomeConfig
from xling_edit.data.schema import LangRecord
from xling_edit.editing import memit as _memit, rome as _rome  # noqa: F401 (register the editors)
from xling_edit.editing.base import EditRequest, build_editor
from xling_edit.editing.stats import CovarianceProvider
from xling_edit.models import load_model

DW_REL = 1e-4  # ΔW, δ, z, R: relative Frobenius error
LOSS_REL = 1e-4  # every entry of the loss trajectories
KEY_REL = 1e-5  # keys read before any update (no optimisation in between)

EIFFEL = LangRecord(subject="Eiffel Tower", prompt="The Eiffel Tower is located in",
                    target_new="Rome", target_true="Paris")
TAJ = LangRecord(subject="ताज महल", prompt="ताज महल है", target_new="रोम")
DARRIEUX = LangRecord(subject="Danielle Darrieux", prompt="Danielle Darrieux speaks",
                      target_new="Tamil")

ROME_HP = dict(layer=1, v_steps=6, v_lr=0.5, v_loss_stop=0.0, clamp_norm_factor=4.0,
               kl_factor=1.0, weight_decay=1e-3, context_templates=[[5, 2], [10, 1]],
               key_average="prompts", use_covariance=True)
MEMIT_HP = dict(v_steps=6, v_lr=0.5, v_loss_stop=0.0, clamp_norm_factor=0.75, kl_factor=1.0,
                weight_decay=1e-3, key_average="templates", mom2_update_weight=0.05,
                z_space="residual", invert_out_norm=False, use_covariance=True)


# ------------------------------------------------------------------ shared helpers
def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = torch.as_tensor(a).double().cpu(), torch.as_tensor(b).double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def assert_trajectory(prod, ref, what):
    assert len(prod) == len(ref), f"{what}: production {len(prod)} forwards, oracle {len(ref)}"
    worst = max(abs(p - r) / max(abs(r), 1e-12) for p, r in zip(prod, ref))
    assert worst < LOSS_REL, f"{what}: max rel diff {worst:.2e}\n prod {prod}\n ref  {ref}"


def spd(d: int, layer: int) -> torch.Tensor:
    """A fixed, well-conditioned random SPD matrix per layer (eigenvalues about 0.5-4.5)."""
    g = torch.Generator().manual_seed(1000 + layer)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.5 * torch.eye(d, dtype=torch.float64)


class FixedStats(CovarianceProvider):
    """Production's statistics provider (memory, prefetch, cached Cholesky ``solve``) serving
    :func:`spd` instead of statistics computed from a corpus."""

    def __init__(self, model, tok, spec, d: int):
        super().__init__(model, tok, spec, "oracle-test", "builtin", {"en": []}, cache_dir=None)
        self.d = d

    def _compute(self, layers):
        for layer in layers:
            self._mem[layer] = spd(self.d, layer)


COVS = ("identity", "spd", "spd_factored")


def covariance(kind: str, tiny):
    """(production's covariance argument, the oracle's ``layer -> C``) for a covariance kind:
    none (identity), a plain callable, or the production provider with cached factors."""
    _, model, tok, spec, _ = tiny
    d = pe.weight_out_in(model.get_submodule(spec.down_proj.format(0))).shape[1]
    if kind == "identity":
        return None, None
    if kind == "spd":
        return (lambda layer: spd(d, layer)), (lambda layer: spd(d, layer))
    return FixedStats(model, tok, spec, d), (lambda layer: spd(d, layer))


def groups_of(context_templates) -> list[int]:
    """Template group of each prompt: the bare prompt is group 0, then one label per group."""
    return [0] + [g + 1 for g, (_length, count) in enumerate(context_templates) for _ in range(count)]


def hparams(schema, model_hp, **kw):
    return OmegaConf.merge(OmegaConf.structured(schema), model_hp, kw)


# ------------------------------------------------------------------ ROME
_ROME_REF: dict = {}


def rome_case(tiny, cov_kind: str, consistent: bool, **kw):
    """Production's ROME edit and the oracle's result for the same inputs (the oracle's keys
    and δ do not depend on the covariance or the key form: cached per architecture)."""
    name, model, tok, spec, cfg = tiny
    hp = hparams(RomeConfig, cfg.hparams.rome, **{**ROME_HP, "consistent_key": consistent, **kw})
    prod_cov, ref_cov = covariance(cov_kind, tiny)
    editor = build_editor("rome", hparams=hp, spec=spec, seed=0, covariance=prod_cov)
    lang = language("en")
    out = editor.edit(model, tok, EditRequest("oracle", lang, EIFFEL))
    prefixes = editor.prefixes(model, tok, lang)
    key = (name, tuple(prefixes), tuple(sorted((k, str(v)) for k, v in kw.items())))
    if key not in _ROME_REF:
        _ROME_REF[key] = pe.rome(
            model, tok, down_template=spec.down_proj, layer=hp.layer, prompt=EIFFEL.prompt,
            subject=EIFFEL.subject, target=EIFFEL.target_new, prefixes=prefixes,
            kl_prompt=lang["kl_prompt"], word_sep=lang["word_sep"], steps=hp.v_steps, lr=hp.v_lr,
            loss_stop=hp.v_loss_stop, clamp_norm_factor=hp.clamp_norm_factor,
            kl_factor=hp.kl_factor, weight_decay=hp.weight_decay)
    ref = _ROME_REF[key]
    cov = ref_cov(hp.layer) if ref_cov is not None else None
    return editor, out, ref, pe.rome_update(ref, cov, consistent), prefixes


@pytest.mark.parametrize("cov_kind", COVS)
@pytest.mark.parametrize("consistent", [False, True], ids=["original_key", "consistent_key"])
def test_rome_matches_oracle(tiny, consistent, cov_kind):
    name, model, tok, spec, cfg = tiny
    editor, out, ref, ref_dw, prefixes = rome_case(tiny, cov_kind, consistent)
    t = out.tensors
    assert len(prefixes) == 1 + 3  # bare prompt + [[5, 2], [10, 1]]
    assert t["prompts"] == [p + EIFFEL.prompt for p in prefixes] + ["Eiffel Tower is a"]
    assert t["subj_pos"] == ref.subj_pos
    for i, (kp, kr) in enumerate(zip(t["keys"], ref.keys, strict=True)):
        assert rel(kp, kr) < KEY_REL, f"key of prompt {i}: {rel(kp, kr):.2e}"
    assert rel(t["v0"], ref.value.v0) < KEY_REL
    assert_trajectory(t["loss_trajectory"], ref.value.losses, "loss")
    assert_trajectory(t["nll_trajectory"], ref.value.nlls, "nll")
    assert rel(t["delta"], ref.value.delta) < DW_REL, f"delta {rel(t['delta'], ref.value.delta):.2e}"
    assert rel(t["k_bar"], ref.k_bar) < KEY_REL, f"mean key {rel(t['k_bar'], ref.k_bar):.2e}"
    k_star = ref.k_bar if consistent else ref.keys[0]
    assert rel(t["k_star"], k_star) < KEY_REL, f"k* {rel(t['k_star'], k_star):.2e}"
    c = spd(len(ref.k_bar), ROME_HP["layer"]) if cov_kind != "identity" else None
    u = ref.k_bar if c is None else torch.linalg.solve(c, ref.k_bar)  # u = C⁻¹k̄
    assert rel(t["u"], u) < KEY_REL, f"u {rel(t['u'], u):.2e}"
    (d,) = out.deltas
    down = spec.module(model, "down_proj", ROME_HP["layer"])
    assert d.param == spec.down_proj_weight_name(ROME_HP["layer"])
    err = rel(d.delta, pe.stored_layout(down, ref_dw))
    assert err < DW_REL, f"ΔW rel err {err:.2e} ({name}, {cov_kind}, consistent={consistent})"


def test_rome_stops_on_the_total_loss(tiny):
    """Published ROME stops when the *total* loss falls below ``v_loss_stop``. The threshold is
    put between an NLL and every total loss up to that forward, so a loop stopping on the NLL
    would stop there, and the published one goes on."""
    _, _, full, _, _ = rome_case(tiny, "identity", False)
    v = full.value
    best = None  # (gap start, gap end, forward)
    for s in range(1, len(v.losses) - 1):  # not the last forward: every loop stops there
        lo, hi = v.nlls[s], min(v.losses[:s + 1])
        if lo >= hi:
            continue
        # a run stopped early repeats the full run up to its stop: keep clear of every loss
        cuts = sorted({lo, hi, *(x for x in v.losses if lo < x < hi)})
        a, b = max(zip(cuts, cuts[1:]), key=lambda ab: ab[1] - ab[0])
        if best is None or b - a > best[1] - best[0]:
            best = (a, b, s)
    assert best is not None, f"no NLL below the running total loss: {v.nlls} / {v.losses}"
    thr, s = 0.5 * (best[0] + best[1]), best[2]
    assert v.nlls[s] < thr
    _, out, ref, _, _ = rome_case(tiny, "identity", False, v_loss_stop=thr)
    margin = min(abs(x - thr) for x in ref.value.losses) / thr
    # production and oracle losses differ by ~1e-7 (relative): 1e-5 keeps the test deterministic
    assert margin > 1e-5, f"threshold {thr} too close to a loss ({margin:.1e})"
    assert len(ref.value.losses) > s + 1
    assert_trajectory(out.tensors["loss_trajectory"], ref.value.losses, "loss with early stop")


# ------------------------------------------------------------------ MEMIT
# The top edited block must not be the model's last: there, δ at the subject's last token
# reaches no later position, the NLL's gradient is exactly zero and Adam's first step amplifies
# float noise (a degenerate test, not a bug). The 3-layer cases use a 4-block model.
MEMIT_CASES = {
    # name: (records with their languages, layers, covariance, context templates, blocks)
    "1req_2layers_identity": ([(EIFFEL, "en")], [0, 1], "identity", [[10, 2]], 3),
    "2req_2layers_spd": ([(EIFFEL, "en"), (TAJ, "hi")], [0, 1], "spd", [[5, 1], [10, 2]], 3),
    "2req_3layers_spd_factored": ([(DARRIEUX, "en"), (EIFFEL, "en")], [0, 1, 2], "spd_factored",
                                  [[10, 2]], 4),
}
_DEEPER: dict = {}


def with_blocks(tiny, n: int):
    """The fixture's architecture with ``n`` blocks (a fresh random model, seed 0, cached)."""
    name, model, tok, spec, cfg = tiny
    if model.config.num_hidden_layers == n:
        return tiny
    if (name, n) not in _DEEPER:
        key = "n_layer" if "n_layer" in cfg.random_init else "num_hidden_layers"
        deep_cfg = OmegaConf.merge(cfg, {"random_init": {key: n}})
        deep, deep_tok = load_model(deep_cfg, seed=0)
        _DEEPER[name, n] = (f"{name}_{n}blocks", deep, deep_tok, spec, deep_cfg)
    return _DEEPER[name, n]


def memit_case(tiny, records, layers, cov_kind, templates, blocks, **kw):
    """Production's MEMIT batch and the oracle's result for the same inputs."""
    tiny = with_blocks(tiny, blocks)
    name, model, tok, spec, cfg = tiny
    hp = hparams(MemitConfig, cfg.hparams.memit, **{**MEMIT_HP, **kw}, layers=layers,
                 context_templates=templates)
    prod_cov, ref_cov = covariance(cov_kind, tiny)
    editor = build_editor("memit", hparams=hp, spec=spec, seed=0, covariance=prod_cov)
    requests = [EditRequest(f"r{i}", language(code), rec) for i, (rec, code) in enumerate(records)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = editor.edit_batch(model, tok, requests)
    facts = [pe.Fact(r.record.prompt, r.record.subject, r.record.target_new,
                     prefixes=editor.prefixes(model, tok, r.lang), kl_prompt=r.lang["kl_prompt"],
                     word_sep=r.lang["word_sep"]) for r in requests]
    ref = pe.memit(model, tok, down_template=spec.down_proj, layer_template=spec.layer,
                   layers=layers, facts=facts, groups=groups_of(templates), cov=ref_cov,
                   lam=hp.mom2_update_weight, steps=hp.v_steps, lr=hp.v_lr,
                   loss_stop=hp.v_loss_stop, clamp_norm_factor=hp.clamp_norm_factor,
                   kl_factor=hp.kl_factor, weight_decay=hp.weight_decay)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    return tiny, out, ref, facts


def assert_memit_agrees(tiny, out, ref, facts, records, layers, templates, case):
    name, model, tok, spec, cfg = tiny
    t = out.tensors
    for i, f in enumerate(facts):
        assert len(f.prefixes) == len(groups_of(templates))
        assert t["prompts"][i] == [p + records[i][0].prompt for p in f.prefixes] + \
            [f.kl_prompt.format(subject=records[i][0].subject)]
        assert t["subj_pos"][i] == [p.subj for p in ref.prompts[i]] + [ref.kls[i].subj]
        assert_trajectory(t["loss_trajectories"][i], ref.values[i].losses, f"request {i} loss")
    assert rel(t["z"], ref.z) < DW_REL, f"z rel err {rel(t['z'], ref.z):.2e}"
    by_param = {d.param: d.delta for d in out.deltas}
    assert list(by_param) == [spec.down_proj_weight_name(l) for l in layers]
    for j, layer in enumerate(layers):
        tol = KEY_REL if j == 0 else DW_REL  # above the first layer keys see the lower updates
        assert rel(t["keys"][layer], ref.keys[layer]) < tol, \
            f"layer {layer} keys: {rel(t['keys'][layer], ref.keys[layer]):.2e}"
        assert rel(t["resid"][layer], ref.resid[layer]) < DW_REL, \
            f"layer {layer} R: {rel(t['resid'][layer], ref.resid[layer]):.2e}"
        down = spec.module(model, "down_proj", layer)
        err = rel(by_param[spec.down_proj_weight_name(layer)], pe.stored_layout(down, ref.dw[layer]))
        assert err < DW_REL, f"layer {layer} ΔW rel err {err:.2e} ({name}, {case})"


@pytest.mark.parametrize("case", list(MEMIT_CASES))
def test_memit_matches_oracle(tiny, case):
    records, layers, cov_kind, templates, blocks = MEMIT_CASES[case]
    tiny, out, ref, facts = memit_case(tiny, records, layers, cov_kind, templates, blocks)
    assert_memit_agrees(tiny, out, ref, facts, records, layers, templates, case)


def stop_lengths(trajectories, thr):
    """Forwards each request runs when it stops once its total loss is below ``thr``."""
    return [next((i + 1 for i, x in enumerate(tr) if x < thr), len(tr)) for tr in trajectories]


def test_memit_requests_stop_on_their_own(tiny):
    """Two requests in one batch, a ``v_loss_stop`` at which one stops after some updates and the
    other does not: each must follow its own published loop (the finished one keeps its δ).
    Without the KL and weight-decay terms the losses fall, so such a threshold exists."""
    records, layers, templates = [(EIFFEL, "en"), (DARRIEUX, "en")], [0, 1], [[10, 2]]
    quiet = dict(kl_factor=0.0, weight_decay=0.0)
    _, _, full, _ = memit_case(tiny, records, layers, "identity", templates, 3, **quiet)
    trs = [v.losses for v in full.values]
    values = sorted({x for tr in trs for x in tr})
    best = None  # (margin, threshold)
    for a, b in zip(values, values[1:]):
        thr = 0.5 * (a + b)
        n = stop_lengths(trs, thr)
        if n[0] != n[1] and min(n) >= 2:  # one stops after an update, the other goes on
            if best is None or (b - a) > best[0]:
                best = (b - a, thr)
    assert best is not None, f"no threshold separates the requests: {trs}"
    thr = best[1]
    assert best[0] / thr > 2e-5, "threshold too close to a loss: the comparison would be flaky"
    tiny2, out, ref, facts = memit_case(tiny, records, layers, "identity", templates, 3,
                                        v_loss_stop=thr, **quiet)
    lengths = [len(v.losses) for v in ref.values]
    assert lengths == stop_lengths(trs, thr) and lengths[0] != lengths[1]
    assert_memit_agrees(tiny2, out, ref, facts, records, layers, templates, "early stop")


pytestmark = pytest.mark.usefixtures("one_thread")
