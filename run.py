"""Entry point: ``python run.py [overrides]`` / ``python run.py -m edit_lang=en,hi,ta``.

Exit status: 0; 3 when no case was edited, or when ``strict`` (the default) and some case failed or was skipped (every case
is still recorded, see ``run_info.json``); 2 for a configuration or data error (one line
``error: ...``, before any weights load; ``HYDRA_FULL_ERROR=1`` shows the traceback); 1 when a
job crashed or was aborted (``abort_after_failures``).
"""

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from xling_edit.configstore import register_configs

register_configs()
_exit_codes: list[int] = []


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from xling_edit.errors import UserError
    from xling_edit.pipeline import exit_code, run

    try:
        info = run(cfg)
        code = exit_code(info, bool(cfg.strict))
        if code and info:  # one line saying why, on the console (run.log has it too)
            why = "no case was edited" if not info["case_status"].get("ok") else \
                "some cases were not edited (strict=true)"
            print(f"exit {code}: {why}: {info.get('outcome')}", file=sys.stderr, flush=True)
        _exit_codes.append(code)
    except UserError as exc:  # configuration / data: one line, no traceback
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = " ".join(str(exc).split())
        record = logging.LogRecord("xling_edit", logging.ERROR, __file__, 0, message, None, None)
        for handler in logging.getLogger().handlers:  # the job's run.log, not the console again
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        print(f"error: {message}", file=sys.stderr, flush=True)
        _exit_codes.append(exc.exit_code)


if __name__ == "__main__":
    # argparse (under Hydra) rejects overrides on both sides of -m; move the flag to the front so
    # `python run.py merge=ties_demo -m edit_lang=en,hi` works as well as `run.py -m ...`.
    from xling_edit.config import upgrade_overrides

    sys.argv[1:] = upgrade_overrides(sys.argv[1:])  # dataset= -> data= (deprecated spelling)
    multirun = [a for a in sys.argv[1:] if a in ("-m", "--multirun")]
    sys.argv[1:] = multirun + [a for a in sys.argv[1:] if a not in ("-m", "--multirun")]
    # an unknown group option (edit_lang=xx) in one line too, unless the traceback is wanted
    from xling_edit.preflight import foreign_job_dir, unknown_group_option

    unknown = unknown_group_option(sys.argv[1:], os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")) \
        or foreign_job_dir(sys.argv[1:])
    if unknown and os.environ.get("HYDRA_FULL_ERROR") != "1":
        print(f"error: {unknown}", file=sys.stderr, flush=True)
        sys.exit(2)
    main()
    sys.exit(max(_exit_codes, default=0))
