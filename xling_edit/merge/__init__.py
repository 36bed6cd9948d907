"""Model merging before editing (the ``merge/`` config group).

``ties.py`` holds the TIES maths as pure functions, ``vocab.py`` what happens to embeddings and
LM heads when the inputs' vocabularies differ, ``backends.py`` the mergekit / peft / direct
backends, ``inputs.py`` how inputs become checkpoint directories (incl. the offline demo's
fine-tuned variants), ``cache.py`` the lock + atomic-rename cache, ``api.py`` the pre-step the
pipeline calls.
"""

from xling_edit.merge.api import merged_model_config

__all__ = ["merged_model_config"]
