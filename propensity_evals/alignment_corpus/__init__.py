"""The StampyAI alignment-research corpus: fetch it reliably and summarise it in one streaming pass.

Modules, one job each: ``sources`` (which files exist, locally or on the hub), ``fetch``
(download/copy, verify, install, manifest), ``manifest`` (the record of what is on disk),
``files`` (atomic writes and hashing), ``jsonl`` (tolerant line-by-line reading), ``explore``
(per-source statistics), ``report`` (Markdown/CSV), ``plots`` (PNG figures) and ``grep``
(keyword sizing).
"""

REPO_ID = "StampyAI/alignment-research-dataset"
DEFAULT_DATA_DIR = "data/alignment_dataset"
