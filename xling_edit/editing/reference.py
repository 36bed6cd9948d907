"""What each method's published setup is, beyond its schema's defaults, and how a run differs.

A method's schema holds its published hyperparameters (``edit.deviations`` lists the fields a
run changes). Much of what decides an edit is not a method field: the statistics C, the
context prefixes, the KL prompt, how the subject is found, how demonstrations are drawn. Each
method declares that part of its published setup as a :class:`Published` (class attribute
``published`` of its editor, citing the source), and :func:`setup_deviations` compares the
run's effective setup with it. The pipeline adds the result to ``edit.deviations`` of every
results line, with the per-line subject localisation (:func:`line_deviations`), and
``summary.csv`` says per row whether any deviation applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Published:
    """A method's published setup outside its schema defaults.

    Args:
        source: where it is from (paper, reference repository and file).
        context_seeds: the prompts the context prefixes are generated from (ROME: the
            tokenizer's ``<|endoftext|>``; MEMIT: five English words).
        context_join: what joins a generated prefix and the prompt.
        kl_prompt: the prompt the KL term is read at (``{subject}`` stands for the subject).
        statistics: the second-moment statistics C (a description; any other corpus, or
            none, is a deviation).
        stats_ridge: diagonal loading of C.
        subject_match: how the subject is found in the prompt (``exact``: the template's
            literal fill; ``fuzzy`` / ``translit`` localisation is a deviation).
        answer_cue: what follows the edit prompt before the target ("": the published
            fill-in prompts, the target right after the prompt; a question's answer cue such
            as " Answer:" is a deviation).
        fields: published values of method-config fields whose schema default is not the
            published value (the baselines' current defaults are the project's variants).
        practice: the published practice in words, for what cannot be compared as a value
            (e.g. how demonstrations are chosen); listed as a deviation unless the run's
            ``practice`` (:meth:`xling_edit.editing.base.Editor.practice`) says the same.
    """

    source: str
    context_seeds: tuple[str, ...] | None = None
    context_join: str | None = None
    kl_prompt: str | None = None
    statistics: str | None = None
    stats_ridge: float | None = None
    subject_match: str | None = None
    answer_cue: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    practice: Mapping[str, str] = field(default_factory=dict)


#: the published statistics of ROME / MEMIT / AlphaEdit: 100,000 Wikipedia samples
WIKIPEDIA_100K = "wikipedia:100000"


def statistics_label(stats: Mapping, uses: bool) -> str:
    """The run's statistics in the terms of :attr:`Published.statistics`."""
    if not uses or str(stats.get("corpus")) == "none":
        return "none (C = I)"
    corpus = str(stats.get("corpus"))
    if corpus == "hf" and "wikipedia" in str(stats.get("hf_path") or "").lower():
        return f"wikipedia:{int(stats.get('per_lang') or 0) * len(stats.get('langs') or [1])}"
    return f"{corpus}:{stats.get('per_lang')}/lang:{'+'.join(map(str, stats.get('langs') or []))}"


def setup_deviations(published: Published | None, mcfg: Mapping, stats: Mapping, lang: Mapping,
                     uses_statistics: bool, practice: Mapping[str, str] | None = None,
                     answer_cue: str = "") -> dict:
    """{item: what the run uses} for every part of the effective setup that differs from
    ``published`` (empty when the method declares none): the statistics and their ridge (when
    the method reads statistics), the context prefixes' seeds and joiner and the KL prompt
    (when the method uses them: ``context_templates`` / ``kl_factor`` > 0), method fields with
    a published value other than the schema default, and the published practice."""
    if published is None:
        return {}
    out: dict[str, Any] = {}
    if published.statistics is not None and "use_covariance" in mcfg:
        used = statistics_label(stats, uses_statistics)
        if used != published.statistics:
            out["statistics"] = used
        if used != "none (C = I)" and published.stats_ridge is not None \
                and float(stats.get("ridge") or 0.0) != published.stats_ridge:
            out["stats.ridge"] = float(stats.get("ridge") or 0.0)
    if mcfg.get("context_templates"):
        seeds = tuple(str(s) for s in (lang.get("context_seeds") or ()))
        if published.context_seeds is not None and seeds != published.context_seeds:
            out["context_seeds"] = list(seeds)
        join = lang.get("context_join")
        if published.context_join is not None and join != published.context_join:
            out["context_join"] = join
    if published.kl_prompt is not None and float(mcfg.get("kl_factor") or 0) > 0 \
            and lang.get("kl_prompt") != published.kl_prompt:
        out["kl_prompt"] = lang.get("kl_prompt")
    if published.answer_cue is not None and answer_cue != published.answer_cue:
        out["answer_cue"] = answer_cue
    for name, value in published.fields.items():
        if name in mcfg and _plain(mcfg[name]) != _plain(value):
            out[name] = _plain(mcfg[name])
    for item, words in published.practice.items():
        used = (practice or {}).get(item)
        if used != words:
            out[item] = used or "differs (see the method's documentation)"
    return out


def line_deviations(published: Published | None, subject: Mapping | None) -> dict:
    """The per-case part: the subject found by another method than the published one."""
    if published is None or published.subject_match is None or not subject:
        return {}
    method = subject.get("method")
    return {"subject_match": method} if method and method != published.subject_match else {}


def _plain(v):
    """A config node as plain Python (lists, dicts), anything else as is."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v


# Fields that are per-model choices in the papers too (which layers, λ), the editing mode, or
# fast paths with identical results: not deviations from the published algorithm.
_NOT_ALGORITHM = {"name", "variant", "layer", "layers", "mom2_update_weight", "mode", "num_edits",
                  "fit_root", "fit_dir", "fit_pattern",  # where keybridge reads its fit pairs
                  "eval_every", "heldout",
                  # localisation: each line records how its subject was found (subject_match)
                  "subject_match_threshold", "subject_fallback"}


def published_deviations(hp) -> dict:
    """{field: value} of a method config instance whose algorithmic settings differ from the
    schema's published defaults (recorded in every results line as ``edit.deviations``)."""
    ref = type(hp)()
    out = {}
    for name in hp.__dataclass_fields__:
        if name in _NOT_ALGORITHM:
            continue
        a, b = getattr(hp, name), getattr(ref, name)
        if a != b:
            out[name] = list(map(list, a)) if name == "context_templates" else a
    return out
