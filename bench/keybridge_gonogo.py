"""Go/no-go for ``method=keybridge`` (MEMIT with cross-script keys): can an English subject key
predict the same subject's Hindi / Tamil key?

MEMIT writes a value for a key: the edited projection's input at the subject's last token. An
English edit writes it for the English key only; a Hindi question about the same subject reads
the projection at the Hindi key. keybridge (``xling_edit/editing/keybridge.py``, which this bench shares its key
extraction and ridge with) fits, once per model, layer and language, a
linear map from English subject keys to the language's subject keys on held-out subject pairs
(BMIKE-53 rows >= 100, never an evaluated row), predict the Hindi/Tamil keys at edit time, and
write the value for all of them. It is worth building only if the predicted key identifies the
true one: the issue's bar is top-1 retrieval among 100 held-out candidates at least half the
time (chance 0.01).

Here, per language: keys at the edited layer (``--layer``, default the model's MEMIT layer) at
the last token of the gold subject span in each row's edit prompt (rows where the translated
subject does not occur verbatim are left out), bare prompts (no context prefixes). The first
``--test`` valid rows from row 100 are the test set (100 candidates), the rest the training
set; each map's ridge strength is chosen on the last fifth of the training rows. Reported:
top-1 and top-5 retrieval of the true key among the test keys by cosine for a centred ridge map,
for the English key plus the mean shift plus a ridge fit of the residual (identity prior), for
the mean shift alone, for the English key itself (no map), and chance. ``map`` is the map with
the better validation top-1 (chosen without the test rows).

    .venv/bin/python bench/keybridge_gonogo.py [--langs hi ta] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "bmike53" / "counterfact"


def retrieval(P, T, ks=(1, 5)):
    """Share of rows i whose prediction P[i] is closest (cosine) to T[i] among all rows of T."""
    import torch

    Pn = P / P.norm(dim=1, keepdim=True)
    Tn = T / T.norm(dim=1, keepdim=True)
    sims = Pn @ Tn.T
    ranks = (sims > sims.diag()[:, None]).sum(dim=1)
    return {f"top{k}": float((ranks < k).double().mean()) for k in ks}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma3_270m")
    ap.add_argument("--langs", nargs="+", default=["hi", "ta"])
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import torch

    from bench.edit_bench import compose
    from xling_edit.editing.keybridge import ridge, subject_keys
    from xling_edit.models import ModelSpec, load_model

    torch.set_num_threads(a.threads)
    cfg = compose(a.model, [])
    layer = a.layer if a.layer is not None else int(cfg.model.hparams.memit.layers[-1])
    model, tok = load_model(cfg.model, seed=0)
    spec = ModelSpec.from_config(cfg.model.templates)
    res = {"model": a.model, "layer": layer, "langs": {}}
    t0 = time.perf_counter()
    for lang in a.langs:
        recs = json.loads((DATA / f"counterfact_test_{lang}.json").read_text(encoding="utf-8"))
        en_items, xx_items, rows = [], [], []
        for r in range(100, len(recs)):  # rows >= 100 only: never an evaluated row
            rec = recs[r]
            if lang not in rec:
                continue
            e, x = rec["en"], rec[lang]
            es, xs = e["src"].find(e["subject"]), x["src"].find(x["subject"])
            if es < 0 or xs < 0 or not x["subject"].strip():
                continue
            en_items.append((e["src"], es, es + len(e["subject"])))
            xx_items.append((x["src"], xs, xs + len(x["subject"])))
            rows.append(r)
        K_en = subject_keys(model, tok, spec, layer, en_items)
        K_xx = subject_keys(model, tok, spec, layer, xx_items)
        n_test = a.test
        te, tr = slice(0, n_test), slice(n_test, len(rows))
        Xtr, Ytr = K_en[tr], K_xx[tr]
        mu_x, mu_y = Xtr.mean(0), Ytr.mean(0)
        n_val = max(1, Xtr.shape[0] // 5)
        lams = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)

        def fit(kind, X, Y, lam):
            """A predictor X -> Y: ``ridge`` (centred ridge regression) or ``identity+ridge``
            (the English key plus the mean shift plus a ridge fit of the residual: the
            identity is the prior the ridge shrinks to)."""
            mx, my = X.mean(0), Y.mean(0)
            if kind == "ridge":
                W = ridge(X - mx, Y - my, lam)
                return lambda Z: (Z - mx) @ W + my
            W = ridge(X - mx, (Y - X) - (my - mx), lam)
            return lambda Z: Z + (my - mx) + (Z - mx) @ W

        maps = {}
        for kind in ("ridge", "identity+ridge"):
            best = None
            for lam in lams:
                f = fit(kind, Xtr[:-n_val], Ytr[:-n_val], lam)
                v = retrieval(f(Xtr[-n_val:]), Ytr[-n_val:])["top1"]
                if best is None or v > best[1]:
                    best = (lam, v)
            f = fit(kind, Xtr, Ytr, best[0])
            P = f(K_en[te])
            maps[kind] = {"lambda": best[0], "val_top1": best[1], **retrieval(P, K_xx[te]),
                          "cosine_pred_true_mean": float(torch.nn.functional.cosine_similarity(P, K_xx[te]).mean())}
        shift = K_en[te] + (mu_y - mu_x)
        out = {"rows_used": len(rows), "train": Xtr.shape[0], "test": n_test,
               "test_rows": [rows[0], rows[n_test - 1]], "maps": maps,
               "mean_shift": retrieval(shift, K_xx[te]),
               "english_key_itself": retrieval(K_en[te], K_xx[te]),
               "chance_top1": 1 / n_test,
               "cosine_en_true_mean": float(torch.nn.functional.cosine_similarity(K_en[te], K_xx[te]).mean())}
        out["map"] = max([maps["ridge"], maps["identity+ridge"]], key=lambda m: m["val_top1"])
        res["langs"][lang] = out
        print(lang, json.dumps(out), flush=True)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    verdict = {l: ("go" if v["map"]["top1"] >= 0.5 else "no-go") for l, v in res["langs"].items()}
    res["verdict"] = verdict
    print("verdict (top-1 >= 0.5):", verdict)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
