"""Pre-edit scores computed once per sweep: an on-disk cache of the unedited model's scores.

Pre-edit evaluation depends on neither the method nor the edit language, yet every job of
``-m method=rome,memit edit_lang=en,de,...`` needs it for every case. The scores (target ids,
log-probabilities and argmax tokens of every row) are stored per (model identity, evaluation
language's rows, evaluation options): the key hashes the rows' token ids, so the case's text,
the answer format, the word separator and the tokenizer are all part of it, and any change
misses the cache. A case is read from the cache only when every one of its languages is there
(a miss scores the whole case together, exactly as without the cache, so the values are
identical); files are written atomically (safetensors, temp file + rename), so concurrent jobs
and ranks share them safely.

A cached case's post-edit pass runs the full depth (the lower-layer hidden states of the
pre-edit pass are not stored): same metrics, up to float rounding of the log-probabilities.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file

from xling_edit.atomic import atomic_path
from xling_edit.evaluation.forward import Scores, SeqScore

log = logging.getLogger(__name__)


class PreScoreCache:
    """``get(rows)`` / ``put(rows, scores)`` for one model and evaluation options.

    Args:
        directory: where the files go (``model.cache_dir/pre_scores``).
        model_key: the weights' identity (name, source, path or package, revision, dtype,
            device type; a merge's path carries its hash).
        options: the evaluation options that can change the numbers (batching, head position,
            chunking, batch size).
    """

    def __init__(self, directory: str | Path, model_key: str, options: Mapping[str, Any]):
        self.dir = Path(directory).expanduser()
        self.model_key, self.options = model_key, dict(options)
        self.hits = self.misses = 0

    def _key(self, lang: str, rows: Sequence) -> str:
        blob = json.dumps({"model": self.model_key, "options": self.options, "lang": lang,
                           "rows": [(r.kind, r.index, r.role, list(r.enc.input_ids), r.enc.n_prompt)
                                    for r in rows]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def _path(self, lang: str, rows: Sequence) -> Path:
        return self.dir / f"{self._key(lang, rows)}.safetensors"

    @staticmethod
    def _by_lang(rows: Sequence) -> dict[str, list[int]]:
        idx: dict[str, list[int]] = defaultdict(list)
        for j, r in enumerate(rows):
            idx[r.lang].append(j)
        return idx

    def get(self, rows: Sequence) -> Scores | None:
        """The case's pre-edit scores if every language is cached, else None."""
        if not rows:
            return None
        out: list[SeqScore | None] = [None] * len(rows)
        for lang, idx in self._by_lang(rows).items():
            path = self._path(lang, [rows[j] for j in idx])
            if not path.exists():
                self.misses += 1
                return None
            t = load_file(str(path))
            ends = torch.cumsum(t["lengths"], 0).tolist()
            starts = [0] + ends[:-1]
            if len(ends) != len(idx):
                self.misses += 1
                return None
            for j, a, b in zip(idx, starts, ends):
                out[j] = SeqScore(t["target_ids"][a:b], t["logprobs"][a:b], t["argmax"][a:b])
        self.hits += 1
        return Scores(out)

    def put(self, rows: Sequence, scores: Sequence[SeqScore]) -> None:
        for lang, idx in self._by_lang(rows).items():
            path = self._path(lang, [rows[j] for j in idx])
            if path.exists():
                continue
            s = [scores[j] for j in idx]
            tensors = {"target_ids": torch.cat([x.target_ids.reshape(-1).long().cpu() for x in s]),
                       "logprobs": torch.cat([x.logprobs.reshape(-1).float().cpu() for x in s]),
                       "argmax": torch.cat([x.argmax.reshape(-1).long().cpu() for x in s]),
                       "lengths": torch.tensor([x.target_ids.numel() for x in s], dtype=torch.long)}
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp))

    def summary(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "dir": str(self.dir)}

    # ---------------------------------------------------------- generated answers
    def _answers_path(self, texts: Sequence[str], stops: Sequence, gen_options: Mapping[str, Any]) -> Path:
        blob = json.dumps({"model": self.model_key, "options": dict(gen_options), "texts": list(texts),
                           "stops": [list(s) for s in stops]}, sort_keys=True, ensure_ascii=False)
        return self.dir / "answers" / f"{hashlib.sha256(blob.encode()).hexdigest()[:24]}.json"

    def get_answers(self, texts: Sequence[str], stops: Sequence, gen_options: Mapping[str, Any]):
        """The unedited model's generated answers to ``texts`` (a list of
        :class:`~xling_edit.evaluation.generate.Generated`), or None when not cached."""
        from xling_edit.evaluation.generate import Generated

        path = self._answers_path(texts, stops, gen_options)
        if not path.exists():
            return None
        rows = json.loads(path.read_text(encoding="utf-8"))
        return [Generated(**{**r, "tokens": tuple(r.get("tokens", ()))}) for r in rows] if len(rows) == len(texts) else None

    def put_answers(self, texts: Sequence[str], stops: Sequence, gen_options: Mapping[str, Any],
                    gens: Sequence) -> None:
        from dataclasses import asdict

        path = self._answers_path(texts, stops, gen_options)
        if path.exists():
            return
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps([asdict(g) for g in gens], ensure_ascii=False), encoding="utf-8")
