"""In-context editing: a context edit changes no parameter, states the fact in the edit language
(its `ike_fact` template) after demonstrations of the three published kinds, and every
evaluation language's prompts follow that context."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT, language
from xling_edit import pipeline
from xling_edit.configstore import register_configs
from xling_edit.data import load_dataset
from xling_edit.editing.base import EditRequest
from xling_edit.editing.ike import KINDS, IkeEditor, build_context
from xling_edit.evaluation.evaluate import build_rows
from xling_edit.languages import find_conf_dir, load_languages

register_configs()
LANGS = sorted(load_languages(find_conf_dir()))


@pytest.fixture(scope="module")
def cases():
    from omegaconf import OmegaConf

    from xling_edit.config import DatasetConfig

    cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), {"name": "builtin", "loader": "builtin"})
    return load_dataset(cfg, LANGS, project_root=ROOT).cases


@pytest.mark.parametrize("code", LANGS)
def test_context_is_built_as_specified_in_every_language(cases, code):
    lang = language(code)
    case = next(c for c in cases if code in c.langs)
    rec = case.langs[code]
    req = EditRequest(case.case_id, lang, rec, answer_prefix=lang.answer_cue)
    context, used = build_context(req, cases, k=6, seed=0)
    assert [k for _, k in used] == [KINDS[i % 3] for i in range(6)]  # copy, update, retain, ...
    assert case.case_id not in {c for c, _ in used}  # never the edited case itself
    fact = lang.ike_fact.format(prompt=rec.prompt.strip(), target=rec.target_new.strip())
    assert context.endswith(fact + "\n")
    blocks = context.split("\n\n")
    assert len(blocks) == 7  # six demonstrations, then the stated fact
    by_id = {c.case_id: c.langs[code] for c in cases if code in c.langs}
    for block, (cid, kind) in zip(reversed(blocks[:-1]), used):  # the first chosen sits last
        d = by_id[cid]
        head, question = block.split("\n")
        assert head == lang.ike_fact.format(prompt=d.prompt.strip(), target=d.target_new.strip())
        expect_q = {"copy": d.prompt, "update": d.rephrases[0] if d.rephrases else None,
                    "retain": d.locality[0].prompt if d.locality else None}[kind]
        assert question.startswith(expect_q + lang.answer_cue)
        answer = d.locality[0].answer if kind == "retain" else d.target_new
        assert question.endswith(answer)
    # deterministic per (seed, case)
    assert build_context(req, cases, k=6, seed=0) == (context, used)
    # the question then comes in any evaluation language, after the same context
    rows, _ = build_rows(case, ["en", code], _tok(), {"en": " ", code: lang.word_sep},
                         context=context)
    assert all(_tok().decode(r.enc.input_ids, skip_special_tokens=True).startswith(context.strip()[:20])
               for r in rows)


_TOKENIZER = None


def _tok():
    global _TOKENIZER
    if _TOKENIZER is None:
        from xling_edit.models.tokenizers import byte_level_tokenizer

        _TOKENIZER = byte_level_tokenizer()
    return _TOKENIZER


def test_ike_changes_no_parameter_and_runs_end_to_end(tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=tiny_llama", "method=ike", "method.k=3", "data.max_cases=4", "eval_langs=[en,de]",
            "print_tables=false", f"model.cache_dir={tmp_path / 'cache'}"])
    info = pipeline.run(cfg, out_dir=tmp_path / "job")
    assert info["case_status"] == {"ok": 4} and info["covariance_statistics"] is None
    lines = [json.loads(l) for l in (tmp_path / "job" / "results.jsonl").read_text().splitlines()]
    assert all(l["edit"]["edit_kind"] == "context" and len(l["edit"]["demonstrations"]) == 3 for l in lines)
    # the demonstrations come from the dataset's other cases, never from an evaluated one
    evaluated = {l["case_id"] for l in lines}
    shown = {d["case_id"] for l in lines for d in l["edit"]["demonstrations"]}
    assert shown and not shown & evaluated
    assert all(l["edit"]["pool"].startswith("heldout") and l["edit"]["retrieval"] == "knn" for l in lines)
    # an editor call touches no weight, bit for bit
    from xling_edit.models import load_model

    model, tok = load_model(cfg.model, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ed = IkeEditor({"k": 2})
    ed.use_dataset([], load_dataset(cfg.data, ["en"], project_root=ROOT).cases)
    case = ed.pool[0]
    out = ed.edit(model, tok, EditRequest(case.case_id, language("en"), case.langs["en"]))
    assert out.deltas == [] and out.kind == "context" and out.context
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_nearest_neighbours_are_chosen_and_the_nearest_sits_last(cases):
    from tests.conftest import model_cfg
    from xling_edit.models import load_model

    model, tok = load_model(model_cfg("tiny_llama"), seed=0)
    en = [c for c in cases if "en" in c.langs][:12]
    query, pool = en[0], en[1:]
    # a pool case whose prompt is the query's own prompt is the nearest neighbour
    from dataclasses import replace

    twin = replace(pool[5], case_id="twin", langs={**pool[5].langs, "en": replace(
        pool[5].langs["en"], prompt=query.langs["en"].prompt)})
    ed = IkeEditor({"k": 3})
    ed.use_dataset([query], [*pool, twin, query])  # an evaluated case offered as held out: dropped
    assert query.case_id not in {c.case_id for c in ed.pool}
    out = ed.edit(model, tok, EditRequest(query.case_id, language("en"), query.langs["en"]))
    assert out.info["demonstrations"][0]["case_id"] == "twin"
    fact = language("en").ike_fact.format(prompt=query.langs["en"].prompt.strip(),
                                          target=query.langs["en"].target_new.strip())
    assert out.context.split("\n\n")[-2].startswith(language("en").ike_fact.format(
        prompt=query.langs["en"].prompt.strip(), target=twin.langs["en"].target_new.strip()))
    assert out.context.endswith(fact + "\n")
    with pytest.raises(ValueError, match="no case outside"):
        IkeEditor({}).use_dataset([query], [query])
