"""The internal schema of a multilingual edit case, and its validation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from xling_edit.errors import UserError


class DataError(UserError, ValueError):
    """Malformed input; the message names the file, the case and the field (printed by
    ``run.py`` in one line, see :mod:`xling_edit.errors`)."""

    def __init__(self, file: str, case: Any, field_name: str, problem: str):
        self.file, self.case, self.field, self.problem = file, case, field_name, problem
        where = "" if case is None else f" case {case!r}:"
        what = "" if field_name.startswith("<") else f" field {field_name!r}:"
        super().__init__(f"{file}:{where}{what} {problem}")

    def as_dict(self) -> dict:
        """What ``run_info.json`` records for a record skipped under ``data.on_invalid=skip``."""
        return {"file": self.file, "case": None if self.case is None else str(self.case),
                "field": self.field, "problem": self.problem}


@dataclass(frozen=True)
class QA:
    prompt: str
    answer: str


@dataclass(frozen=True)
class LangRecord:
    """One language's view of an edit case."""

    subject: str
    prompt: str
    target_new: str
    target_true: str | None = None
    rephrases: tuple[str, ...] = ()
    locality: tuple[QA, ...] = ()
    portability: tuple[QA, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EditCase:
    case_id: str
    langs: dict[str, LangRecord] = field(default_factory=dict)
    relation: str | None = None


#: the longest text field a record may hold (characters). BMIKE-53's longest is 201; a prompt of
#: tens of thousands of characters is a broken record, and would otherwise be found only when its
#: forward pass asks for tens of gigabytes.
MAX_TEXT_CHARS = 2000


def _check_length(value: str, file: str, case: Any, name: str) -> None:
    if len(value) > MAX_TEXT_CHARS:
        raise DataError(file, case, name, f"{len(value)} characters (at most {MAX_TEXT_CHARS}: a "
                                          f"broken record?)")


def require_str(d: Mapping, key: str, *, file: str, case: Any, prefix: str = "",
                optional: bool = False) -> str | None:
    name = f"{prefix}{key}"
    if key not in d or d[key] is None:
        if optional:
            return None
        raise DataError(file, case, name, "missing")
    value = d[key]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]  # some EasyEdit files wrap single answers in a list
    if not isinstance(value, str):
        raise DataError(file, case, name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        if optional:
            return None
        raise DataError(file, case, name, "empty")
    _check_length(value, file, case, name)
    return value


def str_list(value: Any, *, file: str, case: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(file, case, name, "expected a string or a list of strings")
    for i, v in enumerate(value):
        _check_length(v, file, case, f"{name}[{i}]")
    return tuple(v for v in value if v.strip())


def qa_list(value: Any, *, file: str, case: Any, name: str) -> tuple[QA, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise DataError(file, case, name, "expected a list of {prompt, answer} objects")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise DataError(file, case, f"{name}[{i}]", "expected an object with prompt and answer")
        out.append(QA(require_str(item, "prompt", file=file, case=case, prefix=f"{name}[{i}]."),
                      require_str(item, "answer", file=file, case=case, prefix=f"{name}[{i}].")))
    return tuple(out)


def record_from_schema(d: Any, *, file: str, case: Any, lang: str) -> LangRecord:
    """Parse a record written in the internal schema (the built-in fact set's format)."""
    p = f"langs.{lang}."
    if not isinstance(d, Mapping):
        raise DataError(file, case, p.rstrip("."), "expected an object")
    rec = LangRecord(
        subject=require_str(d, "subject", file=file, case=case, prefix=p),
        prompt=require_str(d, "prompt", file=file, case=case, prefix=p),
        target_new=require_str(d, "target_new", file=file, case=case, prefix=p),
        target_true=require_str(d, "target_true", file=file, case=case, prefix=p, optional=True),
        rephrases=str_list(d.get("rephrases"), file=file, case=case, name=p + "rephrases"),
        locality=qa_list(d.get("locality"), file=file, case=case, name=p + "locality"),
        portability=qa_list(d.get("portability"), file=file, case=case, name=p + "portability"),
    )
    return rec
