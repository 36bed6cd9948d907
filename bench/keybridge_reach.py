"""How much of an English edit's value reaches the Hindi key: MEMIT against keybridge.

For BMIKE-53 CounterFact rows (edited in English with the method as configured for the model),
the edit's update ΔW at the edited layer is applied to three keys and projected on the English
residual share r (the value the update is meant to write):

- ``at_en``: (ΔW k_en)·r / |r|², the English key (1 = the share written in full);
- ``at_hi``: the same for the **true** Hindi key (the subject's last token in the row's Hindi
  prompt, gold span; read here for measurement only, never by the methods);
- ``cos``: cosine of the English and Hindi keys.

    .venv/bin/python bench/keybridge_reach.py [--rows 0-3] [--methods memit keybridge] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "bmike53" / "counterfact"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma3_270m")
    ap.add_argument("--rows", default="0-3")
    ap.add_argument("--methods", nargs="+", default=["memit", "keybridge"])
    ap.add_argument("--lang", default="hi")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import torch

    from bench.edit_bench import compose
    from xling_edit.data.schema import LangRecord
    from xling_edit.editing import method_config
    from xling_edit.editing.base import EditRequest, build_editor
    from xling_edit.editing.keybridge import subject_keys
    from xling_edit.languages import DEFAULT_CONF_DIR, load_languages
    from xling_edit.models import ModelSpec, load_model
    from xling_edit.models.spec import is_transposed
    from xling_edit.pipeline import covariance_provider

    torch.set_num_threads(a.threads)
    lo, hi = (int(x) for x in a.rows.split("-"))
    rows = json.loads((DATA / f"counterfact_test_{a.lang}.json").read_text(encoding="utf-8"))
    registry = load_languages(DEFAULT_CONF_DIR)
    model = tok = None
    out = {"model": a.model, "lang": a.lang, "rows": a.rows, "methods": {}}
    for method in a.methods:
        cfg = compose(a.model, [f"method={method}"])
        if model is None:
            model, tok = load_model(cfg.model, seed=0)
        spec = ModelSpec.from_config(cfg.model.templates)
        mcfg = method_config(cfg)
        cov = covariance_provider(cfg, cfg.model, model, tok, spec, registry, ["en"])
        ed = build_editor(mcfg.name, hparams=mcfg, spec=spec, seed=0, covariance=cov,
                          covariance_label=cov.label if cov else None)
        ed.use_dataset([])
        layer = ed.edit_layers[-1]
        down = spec.module(model, "down_proj", layer)
        res = []
        for r in range(lo, hi + 1):
            e, x = rows[r]["en"], rows[r][a.lang]
            start = x["src"].find(x["subject"])
            if start < 0:
                continue
            rec = LangRecord(subject=e["subject"], prompt=e["src"], target_new=e["alt"])
            o = ed.edit(model, tok, EditRequest(str(r), registry["en"], rec,
                                                str(registry["en"].answer_cue)))
            dw = o.deltas[-1].delta.double()
            m = dw.T if is_transposed(down) else dw
            k_en = o.tensors["keys"][layer][:, 0].double()
            resid = o.tensors["resid"][layer][:, 0].double()
            k_xx = subject_keys(model, tok, spec, layer, [(x["src"], start, start + len(x["subject"]))])[0]
            share = lambda k: float((m @ k).dot(resid) / resid.norm() ** 2)  # noqa: E731
            row = {"row": r, "at_en": round(share(k_en), 3), f"at_{a.lang}": round(share(k_xx), 3),
                   "cos": round(float(torch.nn.functional.cosine_similarity(k_en, k_xx, dim=0)), 3)}
            res.append(row)
            print(method, json.dumps(row), flush=True)
        out["methods"][method] = res
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
