"""Generated-answer evaluation of a case: which prompts, what the model said, what it counts as.

For every scored prompt of a case (reliability, generalization, locality, portability) in every
evaluation language, the model's greedy answer (:mod:`xling_edit.evaluation.generate`) is judged
by the match cascade (:func:`xling_edit.evaluation.matching.match_answer`) against the answer the
metric expects in that language:

- reliability / generalization: ``target_new``; ``also`` (reported as ``other_form``): the
  case's ``target_new`` in its other languages (English first) where spelled differently;
- portability: the one-hop answer (``also``: the same item's answer in the other languages);
- locality: the unrelated prompt's true answer (``also`` likewise).

Keys per (case, language, phase), beside the teacher-forced ones (:data:`GEN_KEYS`):

- ``<metric>.gen``: share of the metric's prompts whose answer matches at any rung but ``none``;
- ``<metric>.gen_<rung>`` (reliability, generalization, portability): share matched at that rung
  (they add up to ``<metric>.gen``);
- ``reliability.gen_true``: share of edit-prompt answers that state the *true* answer: before
  the edit, whether the model knows the fact in this language at all (the ceiling of transfer);
- ``locality.gen_agree`` (post-edit only): share of locality answers that equal their pre-edit
  answer after normalisation (stability, not correctness);
- ``gen.script_fidelity`` / ``gen.other_script`` / ``gen.empty``: shares of all the line's
  answers written mostly in the question language's script / in another script (language
  confusion, as far as a script shows it: en/de/fr confusions are invisible) / with no letters;
- ``gen.fluency``: mean n-gram entropy of the answers with two words or more
  (:func:`~xling_edit.evaluation.matching.ngram_entropy`; answers are short, so the scale is
  lower than ROME's 100-token figure).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import mean
from typing import Mapping, Sequence

from xling_edit.data.schema import EditCase
from xling_edit.evaluation.evaluate import Context, context_for
from xling_edit.evaluation.generate import Generated, generate_answers
from xling_edit.evaluation.matching import (
    SUCCESS_RUNGS, answer_script, match_answer, ngram_entropy, same_answer,
)

KIND_METRIC = {"rel": "reliability", "gen": "generalization", "loc": "locality", "port": "portability"}
RUNG_METRICS = ("reliability", "generalization", "portability")
#: every generated-answer key of a phase (summary.csv columns)
GEN_KEYS = (
    tuple(f"{m}.gen" for m in ("reliability", "generalization", "locality", "portability"))
    + ("reliability.gen_true", "locality.gen_agree")
    + tuple(f"{m}.gen_{r}" for m in RUNG_METRICS for r in SUCCESS_RUNGS)
    + ("gen.script_fidelity", "gen.other_script", "gen.empty", "gen.fluency")
)
GEN_POST_ONLY = ("locality.gen_agree",)


@dataclass(frozen=True)
class AnswerPrompt:
    lang: str
    kind: str  # rel | gen | loc | port
    index: int
    prompt: str  # the dataset's prompt
    text: str  # what the model reads: context + prompt + answer cue
    target: str
    also: tuple[str, ...] = ()
    true: str | None = None  # rel: the true answer (reliability.gen_true)


def answer_prompts(case: EditCase, langs: Sequence[str], edit_lang: str,
                   answer_prefix: str | Mapping[str, str] = "", context: Context = "") -> list[AnswerPrompt]:
    """The prompts whose answers are generated for ``case`` in ``langs``, in a fixed order that
    does not depend on ``context`` (so post-edit answers pair with pre-edit ones)."""
    out: list[AnswerPrompt] = []
    # the other forms: every language version of the case (English first), so that the
    # pre-edit judgement does not depend on which language is edited or evaluated
    refs = [case.langs[c] for c in dict.fromkeys(("en", edit_lang, *sorted(case.langs))) if c in case.langs]
    for lang in langs:
        rec = case.langs.get(lang)
        if rec is None:
            continue
        ap = answer_prefix if isinstance(answer_prefix, str) else answer_prefix.get(lang, "")

        def add(kind, i, prompt, target, also, true=None):
            forms = tuple(dict.fromkeys(a for a in also if a and a != target))
            out.append(AnswerPrompt(lang, kind, i, prompt, context_for(context, lang, prompt) + prompt + ap,
                                    target, forms, true))

        new_also = [r.target_new for r in refs]
        add("rel", 0, rec.prompt, rec.target_new, new_also, rec.target_true)
        for i, p in enumerate(rec.rephrases):
            add("gen", i, p, rec.target_new, new_also)
        for i, qa in enumerate(rec.locality):
            add("loc", i, qa.prompt, qa.answer, [r.locality[i].answer for r in refs if i < len(r.locality)])
        for i, qa in enumerate(rec.portability):
            add("port", i, qa.prompt, qa.answer,
                [r.portability[i].answer for r in refs if i < len(r.portability)])
    return out


def judge(prompts: Sequence[AnswerPrompt], gens: Sequence[Generated]) -> list[dict]:
    """Per prompt: ``{"text", "rung", "script", "true_rung"}`` (true_rung on rel only)."""
    out = []
    for p, g in zip(prompts, gens):
        j = {"text": g.text, "rung": match_answer(g.text, p.target, p.lang, p.also),
             "script": answer_script(g.text)}
        if p.kind == "rel" and p.true:
            j["true_rung"] = match_answer(g.text, p.true, p.lang)
        out.append(j)
    return out


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return round(mean(xs), 6) if xs else None


def gen_metrics(prompts: Sequence[AnswerPrompt], judged: Sequence[dict], scripts: Mapping[str, str],
                pre_judged: Sequence[dict] | None = None) -> dict[str, dict[str, float | None]]:
    """{lang: {key of :data:`GEN_KEYS`: value}} for one phase; ``pre_judged`` (the same prompts'
    pre-edit answers) for the post-edit phase only (``locality.gen_agree``)."""
    out: dict[str, dict[str, float | None]] = {}
    for lang in dict.fromkeys(p.lang for p in prompts):
        acc: dict[str, list] = {k: [] for k in GEN_KEYS}
        for j, (p, a) in enumerate(zip(prompts, judged)):
            if p.lang != lang:
                continue
            metric = KIND_METRIC[p.kind]
            acc[f"{metric}.gen"].append(float(a["rung"] != "none"))
            if metric in RUNG_METRICS:
                for r in SUCCESS_RUNGS:
                    acc[f"{metric}.gen_{r}"].append(float(a["rung"] == r))
            if "true_rung" in a:
                acc["reliability.gen_true"].append(float(a["true_rung"] != "none"))
            if p.kind == "loc" and pre_judged is not None:
                acc["locality.gen_agree"].append(float(same_answer(a["text"], pre_judged[j]["text"])))
            script = a["script"]
            acc["gen.empty"].append(float(script is None))
            acc["gen.script_fidelity"].append(float(script is not None and script == scripts.get(lang)))
            acc["gen.other_script"].append(float(script is not None and script != scripts.get(lang)))
            acc["gen.fluency"].append(ngram_entropy(a["text"]))
        out[lang] = {k: _mean(v) for k, v in acc.items()}
    return out


def answer_records(prompts: Sequence[AnswerPrompt], pre: Sequence[dict] | None,
                   post: Sequence[dict] | None) -> dict[str, list[dict]]:
    """{lang: [one record per prompt]}: what a results line's ``answers`` holds: the metric,
    item index, prompt, expected answer, and per phase the generated text, its rung and its
    script (``pre_*`` / ``post_*``)."""
    out: dict[str, list[dict]] = {}
    for j, p in enumerate(prompts):
        rec = {"metric": KIND_METRIC[p.kind], "index": p.index, "prompt": p.prompt, "target": p.target}
        for phase, judged in (("pre", pre), ("post", post)):
            if judged is None:
                continue
            a = judged[j]
            rec[phase] = a["text"]
            rec[f"{phase}_rung"] = a["rung"]
            rec[f"{phase}_script"] = a["script"]
            if "true_rung" in a:
                rec[f"{phase}_true_rung"] = a["true_rung"]
        out.setdefault(p.lang, []).append(rec)
    return out


def stops_for(prompts: Sequence[AnswerPrompt], languages: Mapping[str, Mapping]) -> list[tuple[str, ...]]:
    """Each prompt's stop strings besides EOS and a newline: its language's ``sentence_end``."""
    return [tuple(languages[p.lang].get("sentence_end") or ()) for p in prompts]


def generate_for(model, tok, prompts: Sequence[AnswerPrompt], languages: Mapping[str, Mapping],
                 opts) -> list[Generated]:
    """The greedy answers to ``prompts`` (``opts``: the ``eval`` options: ``max_new_tokens``,
    ``gen_batch_size``, and the fast path ``shared_prefix`` where ``opts`` is an
    :class:`~xling_edit.evaluation.forward.EvalOptions`); each stops at its language's
    ``sentence_end``."""
    return generate_answers(model, tok, [p.text for p in prompts], stops_for(prompts, languages),
                            max_new_tokens=int(opts.max_new_tokens), batch_size=int(opts.gen_batch_size),
                            shared_prefix=bool(getattr(opts, "shared_prefix", True)))
