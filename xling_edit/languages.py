"""The language registry: every ``conf/edit_lang/<code>.yaml`` is a language.

Adding a language is adding one file; nothing here lists languages.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from xling_edit.config import LanguageConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONF_DIR = PROJECT_ROOT / "conf"


# ``edit_lang`` of results edited in every language at once (``method.mode=all_languages``)
ALL_LANGUAGES = "all"


def is_elfi(edit_lang: str, eval_lang: str) -> bool:
    """ELFI ("each language for itself"): the evaluation language was edited. Otherwise ELFO.
    The one definition used by results lines, summaries and reports."""
    return edit_lang == ALL_LANGUAGES or edit_lang == eval_lang


def find_conf_dir() -> Path:
    """The primary config directory of the running Hydra app, else the project's ``conf``."""
    try:
        from hydra.core.hydra_config import HydraConfig

        for src in HydraConfig.get().runtime.config_sources:
            if src.provider == "main" and src.schema == "file":
                return Path(src.path)
    except Exception:  # not inside a Hydra app
        pass
    return DEFAULT_CONF_DIR


def load_languages(conf_dir: Path | None = None) -> dict[str, DictConfig]:
    """{code: LanguageConfig node} for every YAML in ``<conf_dir>/edit_lang``, sorted by file."""
    directory = (conf_dir or find_conf_dir()) / "edit_lang"
    langs: dict[str, DictConfig] = {}
    for path in sorted(directory.glob("*.yaml")):
        node = OmegaConf.merge(OmegaConf.structured(LanguageConfig), OmegaConf.load(path))
        if node.code != path.stem:
            raise ValueError(f"{path}: code {node.code!r} differs from the file name {path.stem!r}")
        langs[node.code] = node
    if not langs:
        raise FileNotFoundError(f"no language files in {directory}")
    return langs


def resolve_eval_langs(requested, registry: dict, edit_lang: str) -> list[str]:
    """Evaluation languages in registry order, edit language included; unknown codes fail."""
    if not requested:
        codes = list(registry)
    else:
        codes = [str(c) for c in requested]
        unknown = [c for c in codes if c not in registry]
        if unknown:
            raise ValueError(f"eval_langs {unknown} unknown; available: {sorted(registry)}")
    if edit_lang not in codes:
        codes.append(edit_lang)
    return codes
