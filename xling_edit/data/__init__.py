"""Edit cases: one multilingual schema and loaders for BMIKE-53, EasyEdit/ROME JSON and the
built-in fact set."""

from xling_edit.data.loaders import LoadedDataset, load_dataset
from xling_edit.data.schema import QA, DataError, EditCase, LangRecord

__all__ = ["QA", "DataError", "EditCase", "LangRecord", "LoadedDataset", "load_dataset"]
