"""method=keybridge: the bridge maths on hand-checkable numbers, the update that writes the value
at the predicted keys, a fit that never reads an evaluated row's translation, and a tiny run."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT
from xling_edit import pipeline
from xling_edit.configstore import register_configs
from xling_edit.editing import keybridge as kb
from xling_edit.editing.memit import memit_update
from xling_edit.fastpaths import EditPaths

register_configs()


def test_ridge_is_the_primal_solution():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    primal = torch.linalg.solve(x.T @ x + 0.5 * torch.eye(8, dtype=torch.float64), x.T @ y)
    assert torch.allclose(kb.ridge(x, y, 0.5), primal, atol=1e-10)


def test_top1_by_hand():
    true = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    pred = torch.tensor([[0.9, 0.1], [0.8, 0.2], [-1.0, 0.1]])  # the second finds the first
    assert kb.top1(pred, true) == pytest.approx(2 / 3)


def test_fit_recovers_a_shifted_linear_map():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    a = 0.3 * torch.randn(6, 6, generator=g, dtype=torch.float64)
    y = x + torch.tensor([1.0, -2, 0, 0, 3, 0], dtype=torch.float64) + x @ a
    br = kb.fit_bridge(x, y, [1e-6, 1.0, 1e3])
    assert br.lam == 1e-6 and br.val_top1 == 1.0 and br.pairs == 200
    assert torch.allclose(br(x.T).T, y, atol=1e-6)  # keys as columns in and out
    # no data beyond the mean: the predictor falls back to the English key plus the shift
    flat = kb.fit_bridge(x, x + 5.0, [1e9])
    assert torch.allclose(flat(x[:3].T).T, x[:3] + 5.0, atol=1e-4)


def test_update_writes_the_value_at_every_predicted_key():
    g = torch.Generator().manual_seed(2)
    d_in, d_out = 16, 4
    k_en = torch.randn(d_in, 1, generator=g, dtype=torch.float64)
    r = torch.randn(d_out, 1, generator=g, dtype=torch.float64)
    br = kb.Bridge(torch.zeros(d_in, dtype=torch.float64), torch.randn(d_in, generator=g, dtype=torch.float64),
                   torch.zeros(d_in, d_in, dtype=torch.float64), 1.0, 1.0, 10)
    p = br(k_en)
    ed = kb.KeybridgeEditor.__new__(kb.KeybridgeEditor)
    ed.hp = kb.KeybridgeConfig(bridge_langs=["hi"], mom2_update_weight=1e-6)
    ed.paths = EditPaths(cache_factorization=False)
    ed.bridges = {(4, "hi"): br}
    dw = ed.layer_update(4, r, k_en, use_cov=False)
    assert torch.allclose(dw @ k_en, r, atol=1e-4) and torch.allclose(dw @ p, r, atol=1e-4)
    plain = memit_update(r, k_en, None, 1e-6)  # MEMIT alone writes the English key only
    assert not torch.allclose(plain @ p, r, atol=1e-2)


def _rows(n, marker_rows=()):
    """A BMIKE-53-layout file's rows; rows in ``marker_rows`` carry a Hindi half that fails when read."""
    class Poisoned(dict):
        def get(self, key, default=None):
            if key == "hi":
                raise AssertionError("an evaluated or early row's translation was read")
            return super().get(key, default)

    rows = []
    for i in range(n):
        en = {"case_id": i, "subject": f"Name{i}", "src": f"Where is Name{i} from?"}
        hi = {"case_id": i, "subject": f"नाम{i}", "src": f"नाम{i} कहाँ से है?"}
        rows.append(Poisoned(en=en, hi=hi) if i in marker_rows else {"en": en, "hi": hi})
    return rows


def test_fit_never_reads_an_evaluated_row(monkeypatch, tmp_path):
    rows = _rows(30, marker_rows=set(range(10)) | {12, 17})
    monkeypatch.setattr("xling_edit.data.loaders._read_json", lambda path: rows)
    en, hi, used = kb.fit_pairs(tmp_path / "x.json", "hi", from_row=10, exclude={"12", "17"})
    assert used == [r for r in range(10, 30) if r not in (12, 17)]
    assert hi[0] == ("नाम10 कहाँ से है?", 0, 5) and en[0][0] == "Where is Name10 from?"


def test_keybridge_end_to_end_on_a_tiny_model(tmp_path):
    data = tmp_path / "data" / "pairs"
    data.mkdir(parents=True)
    (data / "pairs_hi.json").write_text(json.dumps(_rows(80), ensure_ascii=False))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=tiny_llama", "method=keybridge", "data.max_cases=2", "eval_langs=[en,hi]",
            "print_tables=false", "eval.max_new_tokens=2", f"model.cache_dir={tmp_path / 'cache'}",
            f"method.fit_root={tmp_path / 'data'}", "method.fit_dir=pairs",
            "method.fit_pattern='pairs_{lang}.json'", "method.fit_from_row=10", "method.min_pairs=20",
            "method.v_steps=3"])
    info = pipeline.run(cfg, out_dir=tmp_path / "job")
    assert info["case_status"] == {"ok": 2}
    lines = [json.loads(l) for l in (tmp_path / "job" / "results.jsonl").read_text().splitlines()]
    bridge = lines[0]["edit"]["bridge"]["hi"]
    assert bridge["pairs"] == 70 and bridge["rows"] == [10, 79]
    assert lines[0]["method"] == "keybridge"
    # the setup beyond the method config is in every line: built-in statistics, their ridge
    dev = lines[0]["edit"]["deviations"]
    assert dev["statistics"].startswith("builtin:") and dev["stats.ridge"] == 1e-3
    summary = (tmp_path / "job" / "summary.csv").read_text().splitlines()
    assert summary[0].endswith(",deviations") and "statistics" in summary[1].split(",")[-1]
    info = json.loads((tmp_path / "job" / "run_info.json").read_text())
    assert "kmeng01/memit" in info["published_reference"]
    cached = sorted((tmp_path / "cache" / "stats").glob("keybridge-hi-*.safetensors"))
    layers = lines[0]["edit"]["layers"]
    assert [c.name.split("-")[2] for c in cached] == [f"l{l}" for l in layers]  # one fit per layer
