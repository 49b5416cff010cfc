"""One folder per evaluated model variant, named so that runs never collide.

lm-eval names its output subfolder after the ``pretrained=`` value only, so two revisions of
one model (or a sample run and a full run) would land in the same place. Every eval target
therefore writes into ``OUTPUT_DIR/<run_name>/`` and records what it ran in ``run_info.json``
beside lm-eval's own files; ``make report`` and ``make sweep`` read the same names.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

RUN_INFO_FILE = "run_info.json"


def model_slug(model: str) -> str:
    """A readable, filesystem-safe name for a hub id or a local path.

    A local path keeps only its last component (a site-packages path says nothing); a hub id
    ``org/name`` becomes ``org__name`` as lm-eval itself does.
    """
    path = Path(model)
    if path.is_absolute() or model.startswith((".", "~")) or path.exists():
        model = path.expanduser().name or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model.replace("/", "__")).strip("_") or "model"


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


@dataclass
class RunSpec:
    """What one eval run is: enough to name its folder and label it in reports and W&B."""

    model: str
    revision: str = ""
    limit: str = ""
    prompt_format: str = "plain"
    system_prompt: str = ""
    tasks: str = ""
    label: str = ""

    @property
    def run_name(self) -> str:
        name = model_slug(self.label or self.model)
        if self.revision:
            name += f"@{re.sub(r'[^A-Za-z0-9._-]+', '_', self.revision)}"
        if self.prompt_format != "plain":
            name += f"__{self.prompt_format}"
        if self.system_prompt:
            name += f"__sys-{short_hash(self.system_prompt)}"
        if self.limit:
            # A LIMIT run scores a sample of each task: say so wherever its numbers appear.
            name += f"__sample{self.limit}"
        return name

    def write(self, output_dir: Path) -> Path:
        run_dir = Path(output_dir) / self.run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        info = asdict(self) | {
            "run_name": self.run_name,
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (run_dir / RUN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        return run_dir
