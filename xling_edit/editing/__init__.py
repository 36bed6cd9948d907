"""Editing methods, subject localisation, statistics and exact weight restoration.

A method is one module here that decorates its editor with
``@register_editor("<name>", schema=<ConfigDataclass>)`` plus one ``conf/method/<name>.yaml``;
:func:`discover` imports every module of this package (and any extra module a method config
names in ``module``), so nothing else needs to list it.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path


def discover(extra: str | None = None) -> dict[str, type]:
    """Import every editing module (registering its editor) and ``extra`` (a dotted module name
    or a ``.py`` path); return {method name: config schema}."""
    from xling_edit.editing import base

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    if extra:
        import_method_module(extra)
    return dict(base.SCHEMAS)


def import_method_module(ref: str):
    """Import a method's module from a dotted name or a file path (``method.module``)."""
    if ref.endswith(".py") or "/" in ref:
        path = Path(ref).expanduser().resolve()
        if not path.exists():
            raise FileNotFoundError(f"method.module={ref!r}: no such file")
        name = f"xling_edit_user_method_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod
    return importlib.import_module(ref)


def method_config(cfg):
    """The resolved method config of a composed run config, as the method's schema: the
    registry's check that ``model.hparams.<name>`` names real fields (a typo there would
    otherwise be ignored silently) and that the method exists."""
    from omegaconf import OmegaConf

    name = cfg.method.name
    schemas = discover(cfg.method.get("module"))  # imports the editors (registry)
    if name not in schemas:
        raise ValueError(f"unknown method {name!r}; available: {sorted(schemas)}")
    fields = set(schemas[name].__dataclass_fields__)
    # the method's own section, and the sections its named forms read (HPARAMS_VARIANTS: the
    # fields each reads)
    sections = {name: fields, **{k: set(v) for k, v in getattr(schemas[name], "HPARAMS_VARIANTS", {}).items()}}
    for source, known in sections.items():
        overrides = (cfg.model.hparams or {}).get(source) or {}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"model.hparams.{source} has unknown fields {unknown}; known: {sorted(known)}")
    resolved = OmegaConf.to_container(cfg.method, resolve=True)
    resolved.pop("module", None)  # where the method came from, not one of its settings
    return OmegaConf.merge(OmegaConf.structured(schemas[name]), resolved)
