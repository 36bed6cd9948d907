"""Hydra's ConfigStore for this project: the run schema (:class:`xling_edit.config.Config`),
the language schema, every registered method's schema (with each field reading ``${hp:...}``),
and the ``${hp:<field>}`` and ``${project_path:<path>}`` resolvers. It sits above ``config`` and ``editing`` and imports both;
``run.py``, the API and the tests call :func:`register_configs` before composing."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from xling_edit.config import Config, LanguageConfig


def method_default(field_name: str, *, _parent_, _root_):
    """The ``${hp:<field>}`` resolver of ``conf/method/*.yaml``: the model's value
    ``model.hparams.<method>.<field>`` if it sets one, else (for a method whose schema names
    ``HPARAMS_FROM``, e.g. keybridge: memit) ``model.hparams.<that method>.<field>``, else the
    default written in the method's schema (the published value) — so every default is written
    once, in the schema."""
    from xling_edit.editing import discover

    name = _parent_.get("name")
    schemas = discover(_parent_.get("module"))
    if name not in schemas:
        raise ValueError(f"unknown method {name!r}; available: {sorted(schemas)}")
    hp = _root_.get("model", {}).get("hparams", {}) or {}
    schema = schemas[name]
    for source in (name, getattr(schema, "HPARAMS_FROM", None)):
        per_model = (hp.get(source) or {}) if source else {}
        if field_name in per_model:
            value = per_model[field_name]
            return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    if field_name not in schema.__dataclass_fields__:
        raise ValueError(f"${{hp:{field_name}}}: method {name!r} has no field {field_name!r}")
    return getattr(schema(), field_name)


def method_node(schema: type):
    """A method schema as stored for ``conf/method/*.yaml``: every field (but ``name``) reads
    ``${hp:<field>}``, so its value is the model's (``model.hparams.<method>``) else the
    schema's published default, and a method YAML states only what differs
    (schema < model.hparams < method YAML < command line)."""
    import dataclasses

    node = OmegaConf.structured(schema)
    for f in dataclasses.fields(schema):
        if f.name != "name":
            node[f.name] = "${hp:" + f.name + "}"
    return node


def register_configs() -> None:
    """Store the run schema, the language schema and every registered method's schema (found
    by :func:`xling_edit.editing.discover`) in Hydra's ConfigStore, and register the ``hp``
    resolver (:func:`method_default`) and ``project_path`` (:func:`xling_edit.paths.project_path`:
    a relative path taken from the project root, as the output directories are)."""
    from xling_edit.editing import discover  # editing modules import this one: import lazily
    from xling_edit.paths import project_path

    if not OmegaConf.has_resolver("hp"):
        OmegaConf.register_new_resolver("hp", method_default)
    if not OmegaConf.has_resolver("project_path"):
        OmegaConf.register_new_resolver("project_path", project_path)
    cs = ConfigStore.instance()
    cs.store(name="xling_edit_config", node=Config)
    for name, schema in discover().items():
        cs.store(group="xling_edit_schema/method", name=name, node=method_node(schema))
    cs.store(group="xling_edit_schema", name="language", node=LanguageConfig)


def method_schemas(extra_module: str | None = None) -> dict[str, type]:
    """{method name: config schema} of every registered editing method (plus the one in
    ``extra_module``, a method's own module named by ``method.module``)."""
    from xling_edit.editing import discover

    return discover(extra_module)
