"""The documentation does not rot: README.md stays a front door (at most 200 lines), every
relative link in README.md and docs/*.md reaches an existing file (and heading, for anchors into
Markdown), every documented `run.py` command line (code blocks and inline code, each choice of a
sweep) composes with Hydra, and every `make` target, `python bench/<x>.py` script, `python -m
<module>` and repository path (`xling_edit/...`, `conf/...`, ...) the docs show exists.

Fast: no network, no model; only Hydra's compose (a few dozen times) and file look-ups."""

from __future__ import annotations

import importlib.util
import re
import shlex
import unicodedata
from functools import lru_cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from xling_edit.configstore import register_configs

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 200

FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
SHELL_LANGS = {"bash", "sh", "shell", "console"}
PYTHONS = {"python", "python3", ".venv/bin/python"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---------------------------------------------------------------------------------------------
# Markdown reading


def split_markdown(text: str) -> tuple[str, list[tuple[str, list[str]]]]:
    """(prose with fenced blocks blanked out, [(fence language, block lines)])."""
    prose, blocks, fence, lang, body = [], [], None, "", []
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence, lang, body = m.group(1), m.group(2).lower(), []
            prose.append("")
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)) and not line.strip(fence[0]).strip():
            blocks.append((lang, body))
            fence = None
            prose.append("")
        elif fence is not None:
            body.append(line)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), blocks


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, markup and punctuation dropped (letters,
    marks and digits of any script kept, `-` and `_` too), lower case, each space a `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"<[^>]+>", "", text).lower()
    out = []
    for ch in text:
        if ch == " ":
            out.append("-")
        elif ch in "-_" or unicodedata.category(ch)[0] in "LMN":
            out.append(ch)
    return "".join(out)


@lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for line in prose.splitlines():
        m = HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(found)


def links(path: Path) -> list[str]:
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    return LINK.findall(INLINE_CODE.sub("", prose))


def inline_code(path: Path) -> list[str]:
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    return [" ".join(m.group(2).split()) for m in INLINE_CODE.finditer(prose)]


def shell_lines(path: Path) -> list[str]:
    """The command lines of the page's ```bash / ```sh blocks, continuations joined."""
    _, blocks = split_markdown(path.read_text(encoding="utf-8"))
    out = []
    for lang, body in blocks:
        if lang not in SHELL_LANGS:
            continue
        pending = ""
        for line in body:
            line = line.rstrip()
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            out.append((pending + line).strip())
            pending = ""
        if pending:
            out.append(pending.strip())
    return [line for line in out if line]


def words(command: str) -> list[str]:
    """Shell words of one command line, comments dropped."""
    return shlex.split(command, comments=True)


def commands(pages=PAGES, inline: bool = False):
    """(page, shell words) of every documented command, from code blocks (and inline code)."""
    for page in pages:
        lines = shell_lines(page) + (inline_code(page) if inline else [])
        for line in lines:
            try:
                w = words(line)
            except ValueError:  # prose in backticks with an odd quote: not a command
                continue
            if w:
                yield page, w


# ---------------------------------------------------------------------------------------------
# The README's size and the links


def test_readme_is_a_front_door():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}): move detail into docs/"


def test_docs_folder_is_linked_from_the_readme():
    targets = {t.split("#")[0] for t in links(README)}
    missing = [rel(page) for page in PAGES[1:] if rel(page) not in targets]
    assert not missing, f"docs pages not linked from README.md: {missing}"


def test_slugger_follows_github():
    assert github_slug('What "published" means') == "what-published-means"
    assert github_slug("Merging (TIES) and the model zoo") == "merging-ties-and-the-model-zoo"
    assert github_slug("Weights & Biases") == "weights--biases"
    assert github_slug("Crossing scripts: `method=route` (and keybridge's go/no-go)") == (
        "crossing-scripts-methodroute-and-keybridges-gono-go")
    assert github_slug("The paper's full grid, on paper") == "the-papers-full-grid-on-paper"
    assert github_slug("हिन्दी और தமிழ்") == "हिन्दी-और-தமிழ்"  # marks kept


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_reach_files_and_headings(page):
    bad = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            bad.append(f"{target}: no file {dest}")
            continue
        if anchor and dest.is_file() and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {rel(dest)}")
    assert not bad, f"{rel(page)}: broken links:\n" + "\n".join(bad)


# ---------------------------------------------------------------------------------------------
# Documented commands


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


def test_make_targets_exist():
    targets = makefile_targets()
    assert {"run", "test"} <= targets
    used = set()
    for page, w in commands(inline=True):
        if w[0] == "make":
            used |= {(rel(page), t) for t in w[1:] if "=" not in t and not t.startswith("-")}
    assert ("README.md", "run") in used and ("README.md", "test") in used
    missing = sorted(f"{p}: make {t}" for p, t in used if t not in targets)
    assert not missing, "no such Makefile target:\n" + "\n".join(missing)


def module_runnable(name: str) -> bool:
    first = name.split(".")[0]
    if (ROOT / first).is_dir() or (ROOT / f"{first}.py").is_file():
        base = ROOT.joinpath(*name.split("."))
        return base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()
    return importlib.util.find_spec(first) is not None


def test_scripts_and_modules_exist():
    seen, missing = set(), []
    for page, w in commands(inline=True):
        if w[0] not in PYTHONS or len(w) < 2:
            continue
        if w[1] == "-m" and len(w) > 2:
            what, ok = f"python -m {w[2]}", module_runnable(w[2])
        elif w[1].endswith(".py"):
            what, ok = f"python {w[1]}", (ROOT / w[1]).is_file()
        else:
            continue
        seen.add(what)
        if not ok:
            missing.append(f"{rel(page)}: {what}")
    assert "python -m xling_edit.report" in seen and "python run.py" in seen
    assert not missing, "documented but absent:\n" + "\n".join(missing)


REPO_PATH = re.compile(r"^((?:xling_edit|conf|tests|bench|notebooks|docs)/[^\s:()]*)")


def test_repo_paths_named_in_the_docs_exist():
    """`xling_edit/editing/rome.py`, `conf/experiment/paper_*.yaml`, ... in inline code (not in
    quoted error messages, which name what is missing on purpose; `<code>` placeholders skipped)."""
    missing = []
    for page in PAGES:
        for span in inline_code(page):
            if span.startswith("error:"):
                continue
            for token in span.split():
                m = REPO_PATH.match(token)
                if not m or "<" in token or "{" in token:
                    continue
                path = m.group(1).rstrip(".,;")
                found = any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()
                if not found:
                    missing.append(f"{rel(page)}: {path}")
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)


OVERRIDE = re.compile(r"^(?:[+~]{0,2}[\w@/.\-]+=.*|~[\w@/.\-]+)$")
PLACEHOLDER = re.compile(r"<[^<>]+>|\.\.\.|=[A-Z][A-Z_]*$")  # <date>, ..., stats.per_lang=N


def run_py_overrides(w: list[str]) -> list[str] | None:
    """Hydra overrides of a `python run.py ...` command (flags and their values dropped), or None
    for another command or one with placeholders (`<date>`, `...`, an upper-case `=N`)."""
    if w[0] not in PYTHONS or len(w) < 2 or w[1] != "run.py":
        return None
    if any(PLACEHOLDER.search(t) for t in w[2:]):
        return None
    return [t for t in w[2:] if not t.startswith("-") and OVERRIDE.match(t)]


def sweep_variants(overrides: list[str]) -> list[tuple[str, ...]]:
    """One override list per choice of each swept key (the others at their first choice)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    axes = []
    for o, text in zip(parsed, overrides):
        if o.is_sweep_override():
            prefix = text[: len(text) - len(text.lstrip("+~"))]
            axes.append([f"{prefix}{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([text])
    first = [a[0] for a in axes]
    variants = {tuple(first)}
    for i, axis in enumerate(axes):
        for choice in axis[1:]:
            variants.add(tuple(first[:i] + [choice] + first[i + 1 :]))
    return sorted(variants)


def documented_runs() -> dict[tuple[str, ...], list[str]]:
    """{override list to compose: where it is documented} over every page's run.py commands."""
    runs: dict[tuple[str, ...], list[str]] = {}
    for page, w in commands(inline=True):
        overrides = run_py_overrides(w)
        if w[0] == "make" and "run" in w:  # make run ARGS="edit_lang=hi data.max_cases=5"
            args = [a[len("ARGS="):] for a in w if a.startswith("ARGS=")]
            overrides = run_py_overrides(["python", "run.py", *" ".join(args).split()])
        if overrides is None:
            continue
        for variant in sweep_variants(overrides):
            runs.setdefault(variant, []).append(f"{rel(page)}: {' '.join(w)}")
    return runs


@pytest.fixture(scope="module")
def hydra_conf():
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        yield


def test_documented_run_commands_compose(hydra_conf):
    runs = documented_runs()
    assert len(runs) >= 10, "the docs' run.py commands were not found"
    failed = []
    for overrides, where in runs.items():
        try:
            compose(config_name="config", overrides=list(overrides))
        except Exception as e:  # noqa: BLE001 - report every failing command at once
            failed.append(f"{where[0]}\n    {list(overrides)}: {type(e).__name__}: {e}")
    assert not failed, "documented commands that do not compose:\n" + "\n".join(failed)


def test_command_reader_sees_overrides_flags_and_sweeps():
    w = words("python run.py -m method=rome,memit eval_langs=[en,de] --cfg job +a@b.c=1  # sweep")
    assert run_py_overrides(w) == ["method=rome,memit", "eval_langs=[en,de]", "+a@b.c=1"]
    assert run_py_overrides(words("python run.py -m multirun/<date>/<time>")) is None
    assert run_py_overrides(words("python run.py stats.per_lang=N")) is None
    assert sweep_variants(["method=rome,memit", "edit_lang=en,hi"]) == sorted(
        [("method=rome", "edit_lang=en"), ("method=memit", "edit_lang=en"), ("method=rome", "edit_lang=hi")])
