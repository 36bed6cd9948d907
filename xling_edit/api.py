"""Entry points for notebooks and scripts: a job as ``run.py`` runs it, and a single kept edit.

    from xling_edit import api

    df = api.run(["method=rome", "data=bmike53_counterfact", "data.max_cases=5"])
    df.groupby("eval_lang")["post.reliability.gen"].mean()

    model, tok = api.edit(["method=rome"], subject="Danielle Darrieux",
                          prompt="The mother tongue of Danielle Darrieux is", target="English")
    model.save_pretrained("darrieux-english")   # safetensors; tok.save_pretrained likewise

Both take the same Hydra overrides as ``run.py`` (``conf/`` is the project's).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Sequence


def compose(overrides: Sequence[str] = ()):
    """The job config ``run.py`` would compose from ``overrides``."""
    from hydra import compose as h_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from xling_edit.config import upgrade_overrides
    from xling_edit.configstore import register_configs
    from xling_edit.languages import DEFAULT_CONF_DIR

    register_configs()
    overrides = upgrade_overrides(overrides)
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(DEFAULT_CONF_DIR), version_base="1.3"):
        return h_compose(config_name="config", overrides=list(overrides))


def run(overrides: Sequence[str] = (), out_dir: str | Path | None = None):
    """Run one job (``python run.py <overrides>``, without the printed tables) and return its
    results lines flattened into a ``pandas.DataFrame``: one row per (case, evaluation
    language), nested fields as dotted columns (``post.reliability.gen``, ``edit.steps``, ...);
    the generated ``answers`` stay one list-valued column. ``out_dir``: the job directory
    (default: a new temporary directory, named in ``df.attrs["out_dir"]``)."""
    import pandas as pd

    from xling_edit import pipeline

    cfg = compose([*overrides, "print_tables=false"])
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="xling_edit_"))
    info = pipeline.run(cfg, out_dir=out)
    lines = [json.loads(l) for l in (out / "results.jsonl").read_text(encoding="utf-8").splitlines() if l]
    answers = [l.pop("answers", None) for l in lines]
    df = pd.json_normalize(lines)
    df["answers"] = answers
    df.attrs["out_dir"], df.attrs["run_info"] = str(out), info
    return df


def edit(overrides: Sequence[str] = (), *, subject: str, prompt: str, target: str, lang: str = "en",
         target_true: str | None = None, model=None, tok=None):
    """Edit the model of the composed config (or ``model``/``tok``) with the configured method
    and return ``(model, tok)`` with the edit **kept** (not restored): the weight deltas are
    added in place. The request is ``subject``, ``prompt`` (containing the subject) and the new
    ``target`` in language ``lang``; the dataset's answer format is not applied (write the
    prompt as the model should complete it). A context edit (IKE, route) changes no weight:
    its context is returned on ``model.xling_edit_context``. Save the result with
    ``model.save_pretrained(dir)`` (safetensors)."""
    return edit_sequence(overrides, [dict(subject=subject, prompt=prompt, target=target,
                                          target_true=target_true)], lang=lang, model=model, tok=tok)


def edit_sequence(overrides: Sequence[str] = (), requests: Sequence[dict] = (), *, lang: str = "en",
                  model=None, tok=None):
    """Several edits one after another, each made on the model the earlier ones left (as
    ``method.mode=sequential`` does), all **kept**; returns ``(model, tok)``, ready for
    ``model.save_pretrained(dir)``. ``requests``: mappings with ``subject``, ``prompt``,
    ``target`` (and optionally ``target_true``). ``model.xling_edit_info`` is the list of the
    edits' infos; a context edit's contexts are in ``model.xling_edit_context`` (a list)."""
    import torch

    from xling_edit import pipeline
    from xling_edit.data.schema import LangRecord
    from xling_edit.editing.base import EditRequest, build_editor, capabilities
    from xling_edit.languages import DEFAULT_CONF_DIR, load_languages
    from xling_edit.models import ModelSpec, load_model
    from xling_edit.models.loading import drop_gguf_quantizer

    cfg = compose([*overrides, f"edit_lang={lang}"])
    pipeline.seed_everything(cfg.seed)
    if model is None:
        model, tok = load_model(cfg.model, seed=cfg.seed)
    spec = ModelSpec.from_config(cfg.model.templates)
    mcfg = pipeline.method_config(cfg)
    registry = load_languages(DEFAULT_CONF_DIR)
    registry[lang] = cfg.edit_lang
    cov = pipeline.covariance_provider(cfg, cfg.model, model, tok, spec, registry, [lang]) \
        if mcfg.get("use_covariance") else None
    editor = build_editor(mcfg.name, hparams=mcfg, spec=spec, seed=cfg.seed, covariance=cov,
                          covariance_label=cov.label if cov else "identity")
    if capabilities(mcfg.name).uses_dataset:  # IKE draws its demonstrations from a dataset
        from xling_edit.data import load_dataset
        from xling_edit.languages import PROJECT_ROOT

        editor.use_dataset([], load_dataset(cfg.data, [lang], project_root=PROJECT_ROOT).cases)
    editor.begin_group()
    params = dict(model.named_parameters())
    infos, contexts = [], []
    for i, r in enumerate(requests):
        record = LangRecord(subject=r["subject"], prompt=r["prompt"], target_new=r["target"],
                            target_true=r.get("target_true"))
        out = editor.edit(model, tok, EditRequest(f"api{i}", registry[lang], record))
        with torch.no_grad():
            for d in out.deltas:
                params[d.param].add_(d.delta.to(params[d.param].dtype))
        infos.append(out.info)
        contexts.append(out.context)
    single = len(infos) == 1
    model.xling_edit_context = contexts[0] if single else contexts
    model.xling_edit_info = infos[0] if single else infos
    if getattr(model, "hf_quantizer", None) is not None:  # loaded straight from a GGUF file
        drop_gguf_quantizer(model)
    return model, tok
