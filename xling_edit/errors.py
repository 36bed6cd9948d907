"""Errors a user can fix, and the guard that stops a job whose cases all fail the same way.

``python run.py`` prints a :class:`UserError` as one line (``error: <message>``) and exits with
its ``exit_code``; any other exception keeps Hydra's traceback. ``HYDRA_FULL_ERROR=1`` shows the
full traceback for every error.
"""

from __future__ import annotations

from typing import Iterable, Mapping


class UserError(Exception):
    """An error in what the user gave (configuration, data, model files): printed in one line."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A configuration that cannot run (unknown language, template, layer, option value...)."""


class WeightsNotReachable(ConfigError):
    """The model's files are neither local nor allowed to be downloaded."""


class AbortRun(UserError, RuntimeError):
    """A job stopped because its first cases all failed with the same exception type."""

    exit_code = 1


def failure_type(reason: str | None) -> str:
    """``RuntimeError`` from a failed line's reason ``"RuntimeError: ..."``."""
    head = (reason or "").split(":", 1)[0].strip()
    return head if head.isidentifier() else "error"


class FailureGuard:
    """Aborts a job when its first ``n`` cases all failed with the same exception type.

    A programming or configuration error inside the per-case code otherwise turns every case of
    a 1,031-case file into a ``failed`` line, hours later. Cases are counted in the order this
    process runs them; once ``n`` cases were seen (or one succeeded) the guard is spent, so later
    failures are recorded and the job goes on. ``n = 0`` disables it. A case counts as failed
    when every line it has (languages it lacks aside) has status ``failed``; skipped cases
    (subject not found, no version in the edit language) are data, not errors, and are ignored.
    """

    def __init__(self, n: int):
        self.n = max(0, int(n))
        self.types: list[str] = []
        self.first: dict | None = None
        self.armed = self.n > 0

    def update(self, lines: Iterable[Mapping]) -> None:
        """Feed one finished group's results lines; raises :class:`AbortRun` when the first
        ``n`` cases all failed with one exception type."""
        if not self.armed:
            return
        by_case: dict[str, list[Mapping]] = {}
        for line in lines:
            if line.get("status") != "missing_eval_lang":
                by_case.setdefault(str(line["case_id"]), []).append(line)
        for case_id, case_lines in by_case.items():
            statuses = {l.get("status") for l in case_lines}
            if statuses == {"skipped"}:
                continue
            if statuses != {"failed"}:
                self.armed = False  # a case worked: failures from here on are the cases' own
                return
            reason = case_lines[0].get("reason")
            self.types.append(failure_type(reason))
            if self.first is None:
                self.first = {"case_id": case_id, "reason": reason}
            if len(set(self.types)) > 1:
                self.armed = False
                return
            if len(self.types) >= self.n:
                raise AbortRun(
                    f"aborting: the first {self.n} cases all failed with {self.types[0]} (first: case "
                    f"{self.first['case_id']!r}: {self.first['reason']}); this looks like a bug or "
                    f"a configuration problem rather than bad cases (abort_after_failures={self.n}; "
                    f"0 disables this check)")


class MissingData(UserError, FileNotFoundError):
    """A dataset file or folder that is not where the configuration says."""
