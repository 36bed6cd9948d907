"""Everything a job can check before the model's weights load.

:func:`check` validates, in this order: values left missing (``???``), interpolations, the
languages (``eval_langs``, ``stats.langs``), the method (known fields, mode, group size), the
dataset (read in full: a bad file or record fails here, naming file, case and field), and the
model: its files are reachable (local checkpoint, Hugging Face cache, or downloads allowed) and
every module template resolves on its module tree, built on the ``meta`` device from its config
(no weights, no memory), with the edited layers inside its depth. A failure raises a
:class:`~xling_edit.errors.UserError` whose message is one line; ``run.py`` prints just that.

Where a model's structure cannot be known without loading it (a GGUF package converted for the
first time, a TIES merge), :func:`check_loaded` makes the same template check right after
loading, before anything else runs.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from xling_edit.errors import ConfigError, UserError
from xling_edit.jobdir import JOB_FILE

log = logging.getLogger(__name__)


def check(cfg: DictConfig) -> dict[str, Any]:
    """Validate ``cfg`` without loading weights (see the module doc); returns what was found:
    ``eval_langs``, ``stats_langs``, ``edit_layers``, ``n_cases``, ``templates_checked``."""
    try:
        return _check(cfg)
    except UserError:
        raise
    except (ValueError, KeyError, OSError, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(first) from exc


def _check_languages_for_answers(cfg: DictConfig, registry, eval_langs) -> None:
    """What generated-answer evaluation reads: each language's script (a Unicode script name)
    and ``morphology`` (parsed), and the token cap."""
    from xling_edit.evaluation.matching import check_script, parse_morphology

    ev = cfg.get("eval") or {}
    cap = ev.get("max_new_tokens", 1)
    if ev.get("generate", False) and (not isinstance(cap, int) or cap < 1):
        raise ConfigError(f"eval.max_new_tokens must be an integer >= 1, got {cap!r}")
    for code in eval_langs:
        lang = registry[code]
        try:
            check_script(str(lang.script))
            morph = lang.get("morphology")
            parse_morphology(OmegaConf.to_container(morph) if morph is not None else None)
        except ValueError as exc:
            raise ConfigError(f"conf/edit_lang/{code}.yaml: {exc}") from None


def _check(cfg: DictConfig) -> dict[str, Any]:
    from xling_edit.data import load_dataset
    from xling_edit.editing import method_config
    from xling_edit.editing.base import capabilities
    from xling_edit.languages import PROJECT_ROOT, find_conf_dir, load_languages, resolve_eval_langs

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"no value given for {', '.join(missing)} (marked ??? in its config file); "
                          f"set it on the command line, e.g. {missing[0]}=...")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves

    registry = load_languages(find_conf_dir())
    edit_code = str(cfg.edit_lang.code)
    registry[edit_code] = cfg.edit_lang
    eval_langs = resolve_eval_langs(cfg.eval_langs, registry, edit_code)

    _check_languages_for_answers(cfg, registry, eval_langs)

    mcfg = method_config(cfg)
    caps = capabilities(mcfg.name)  # the registry says what the method can do
    caps.check_mode(str(mcfg.get("mode", "single")), int(mcfg.get("num_edits", 1)))
    if cfg.get("export_model") and mcfg.get("mode") != "sequential":
        raise ConfigError(f"export_model={cfg.export_model!r} needs method.mode=sequential (mode="
                          f"{mcfg.get('mode')}): the other modes restore the weights after every case")
    layers, option = caps.configured_layers(mcfg)

    stats = stats_langs(cfg, eval_langs)
    _check_stats(cfg, stats, registry, edit_code, bool(mcfg.get("use_covariance", True)))

    ds = load_dataset(cfg.data, eval_langs, project_root=PROJECT_ROOT, report=False)

    checked = False
    if cfg.merge.name != "none":
        from xling_edit.merge.api import check_merge

        check_merge(cfg.merge)
    else:
        from xling_edit.models.loading import model_skeleton
        from xling_edit.models.spec import ModelSpec

        skeleton = model_skeleton(cfg.model)
        if skeleton is not None:
            ModelSpec.from_config(cfg.model.templates).check(
                skeleton, layers, f"model {cfg.model.name}", option)
            check_post_mlp_norm(skeleton, cfg, mcfg, layers)
            checked = True
    if not checked:
        log.info("model templates are checked once the model is loaded (its structure is not "
                 "known before: %s)", "TIES merge" if cfg.merge.name != "none" else
                 "GGUF package converted on first use")
    log.info("checked before loading: %d cases, eval languages %s, %s %s, statistics languages %s",
             len(ds.cases), eval_langs, option, layers, stats)
    return {"eval_langs": eval_langs, "stats_langs": stats, "edit_layers": layers,
            "n_cases": len(ds.cases), "templates_checked": checked}


#: module names of a norm applied to the MLP output before the residual add (Gemma-2/3)
POST_MLP_NORMS = ("post_feedforward_layernorm", "post_mlp_layernorm", "post_ffn_norm")


def check_post_mlp_norm(model, cfg: DictConfig, mcfg, layers) -> None:
    """A ``ConfigError`` when the model normalises the MLP output before the residual add but its
    templates do not say so (``model.templates.mlp_out_norm``) and the method spreads a
    residual-space target over projection outputs (MEMIT, AlphaEdit, keybridge with
    ``z_space=residual`` or without ``invert_out_norm``): the published MEMIT then reaches only
    a fraction of its target, or the opposite of it. Names the template and the variant."""
    if not layers or "z_space" not in mcfg:
        return
    templates = cfg.model.templates
    block = str(templates.layer).format(int(layers[0]))
    try:
        children = [n for n, _ in model.get_submodule(block).named_children()]
    except AttributeError:
        return
    found = [n for n in children if n in POST_MLP_NORMS]
    if not found:
        return
    if not templates.get("mlp_out_norm"):
        raise ConfigError(
            f"model {cfg.model.name} normalises the MLP output ({block}.{found[0]}) before the "
            f"residual add, but model.templates.mlp_out_norm is not set: {mcfg.name} would write "
            f"residual-space shares that the norm rescales. Set model.templates.mlp_out_norm="
            f"{str(templates.layer)}.{found[0]} and use the Gemma variant method.z_space=mlp_out "
            f"method.invert_out_norm=true (as conf/model/gemma3_270m.yaml does)")
    if mcfg.get("z_space") == "residual" or not mcfg.get("invert_out_norm"):
        log.warning("model %s normalises the MLP output (%s); %s runs with z_space=%s, "
                    "invert_out_norm=%s: the published form reaches only part of its target here "
                    "(variant gemma_out_norm: method.z_space=mlp_out method.invert_out_norm=true)",
                    cfg.model.name, found[0], mcfg.name, mcfg.get("z_space"), mcfg.get("invert_out_norm"))


def check_loaded(model, cfg: DictConfig, name: str | None = None) -> None:
    """The template and layer check of :func:`check` on a loaded model."""
    from xling_edit.editing import method_config
    from xling_edit.editing.base import capabilities
    from xling_edit.models.spec import ModelSpec

    mcfg = method_config(cfg)
    layers, option = capabilities(mcfg.name).configured_layers(mcfg)
    ModelSpec.from_config(cfg.model.templates).check(model, layers, f"model {name or cfg.model.name}",
                                                     option)
    check_post_mlp_norm(model, cfg, mcfg, layers)


def stats_langs(cfg: DictConfig, eval_langs) -> list[str]:
    """The languages of the covariance statistics: ``stats.langs`` (default: the study's eight,
    fixed), or the evaluation languages when it is null."""
    langs = cfg.stats.langs
    return [str(c) for c in (langs if langs is not None and len(langs) else eval_langs)]


def _check_stats(cfg, langs: list[str], registry: dict, edit_code: str, used: bool) -> None:
    from xling_edit.editing.stats import has_builtin_text

    corpus = str(cfg.stats.corpus)
    if corpus not in ("builtin", "generated", "files", "hf", "none"):
        raise ConfigError(f"stats.corpus={corpus!r}; one of builtin, generated, files, hf, none")
    if not used or corpus == "none":
        return
    if corpus == "files":
        import os

        files = [str(f) for f in cfg.stats.files]
        absent = [f for f in files if not os.path.isfile(f)]
        if not files or absent:
            raise ConfigError(f"stats.corpus=files needs readable stats.files; "
                              f"{'none given' if not files else f'not found: {absent}'}")
        return
    if corpus == "hf" and not cfg.stats.hf_path:
        raise ConfigError("stats.corpus=hf needs stats.hf_path (e.g. wikimedia/wikipedia)")
    if corpus in ("generated", "hf"):
        unknown = [c for c in langs if c not in registry]
        if corpus == "generated" and unknown:
            raise ConfigError(f"stats.langs {unknown}: no conf/edit_lang file (stats.corpus=generated "
                              f"starts from each language's context_seeds); available: {sorted(registry)}")
        return
    if corpus != "builtin":
        return
    with_text = [c for c in langs if has_builtin_text(c)]
    without = [c for c in langs if c not in with_text]
    if not with_text:
        raise ConfigError(f"stats.langs {langs}: none has a built-in statistics text "
                          f"(xling_edit/data/stats_corpus/<code>.txt)")
    if without:
        log.warning("stats.langs %s have no built-in statistics text and add nothing to the "
                    "statistics (they come from %s)", without, "+".join(with_text))
    if edit_code not in with_text:
        why = ("it has no built-in statistics text (xling_edit/data/stats_corpus/"
               f"{edit_code}.txt)" if not has_builtin_text(edit_code) else "it is not in stats.langs")
        log.warning("edit language %s: the covariance statistics of its keys come from the "
                    "builtin corpus in %s (stats.langs), not from %s text: %s. To add it: put a "
                    "text in stats_corpus/%s.txt and %s in stats.langs, or use stats.corpus="
                    "files/hf", edit_code, "+".join(with_text), edit_code, why, edit_code, edit_code)


def foreign_job_dir(argv) -> str | None:
    """The one-line message for ``hydra.run.dir=<dir>`` naming a job directory that holds a job of
    another config (and no ``resume=``), found before Hydra writes its ``.hydra/`` files and log
    into that directory; None otherwise (and whenever the config cannot be composed here: Hydra
    then reports it). Multiruns and other config directories are left alone."""
    import json
    from pathlib import Path

    if any(a in ("-m", "--multirun") or a.startswith(("--config-path", "--config-dir", "-cp", "-cd",
                                                        "--config-name", "-cn", "resume="))
           for a in argv):
        return None
    dirs = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    if not dirs or not (Path(dirs[-1]) / JOB_FILE).is_file():
        return None
    try:
        old = json.loads((Path(dirs[-1]) / JOB_FILE).read_text()).get("fingerprint")
        from xling_edit import api, resume

        fp = resume.fingerprint(api.compose([a for a in argv if not a.startswith(("hydra.", "-"))]))
    except Exception:  # noqa: BLE001  (composition errors are Hydra's to report)
        return None
    if old == fp:
        return None
    return (f"hydra.run.dir={dirs[-1]} holds a job with another config (fingerprint {old}, this one "
            f"{fp}); choose another output directory (nothing was written there)")


def unknown_group_option(argv, conf_dir) -> str | None:
    """The one-line message for a command-line ``group=option`` whose file does not exist
    (``edit_lang=xx``, ``model=tamil_lama``), found before Hydra composes; None when every plain
    option exists. Only the simple forms are checked (``group=a`` / ``group=a,b``, a group being
    a folder of ``conf_dir``); anything else (``+``/``~``, ``@package``, nested groups, sweep
    functions, another config directory) is left to Hydra's own message."""
    import re
    from pathlib import Path

    conf_dir = Path(conf_dir)
    if any(a.startswith(("--config-path", "--config-dir", "-cp", "-cd", "--config-name", "-cn",
                         "hydra.searchpath"))
           for a in argv):
        return None
    for arg in argv:
        if arg.startswith(("-", "+", "~")) or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        if not re.fullmatch(r"[a-z_]+", key) or key == "hydra" or not (conf_dir / key).is_dir():
            continue
        values = value.split(",")
        if not all(re.fullmatch(r"[A-Za-z0-9_\-]+", v) for v in values):
            continue  # glob(...), range(...), quoted values: Hydra's business
        for v in values:
            if v != "null" and not (conf_dir / key / f"{v}.yaml").exists():
                options = sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
                return f"{key}={v}: no such option (no conf/{key}/{v}.yaml); available: {', '.join(options)}"
    return None
