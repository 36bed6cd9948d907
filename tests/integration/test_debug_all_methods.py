"""debug=tiny works with every method: the README's compare-families sweep, smoke-tested."""

import pytest

from tests.conftest import SHARED_DATA

METHODS = ["rome", "rome_fast", "memit", "alphaedit", "keybridge", "lora", "lora_down", "ft_l",
           "ft_l_nll", "ike", "route", "route_qa"]


@pytest.mark.parametrize("method", METHODS)
def test_debug_tiny_runs_every_method(method, tmp_path):
    from xling_edit import api

    if method == "keybridge" and not SHARED_DATA.is_dir():
        pytest.skip(f"keybridge fits on BMIKE-53 rows >= 100: {SHARED_DATA} not found")
    df = api.run([f"method={method}", "debug=tiny", "data.max_cases=1", "eval.max_new_tokens=2",
                  f"model.cache_dir={tmp_path / 'cache'}"], out_dir=tmp_path / "job")
    assert set(df["eval_lang"]) == {"en", "de"}
    assert (df["status"] == "ok").all(), df[["status", "reason"]].to_dict("records")
    assert df["post.reliability.token_acc"].notna().all()
