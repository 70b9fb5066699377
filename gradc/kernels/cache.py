"""kernels stage: turn generated source into an imported module, once.

Numba's on-disk cache needs a real file and an importable module name, so the
source is written to ``<cache dir>/gradc_gen_<sha256[:16]>.py`` and imported
with ``importlib``; the module is registered in ``sys.modules`` *before* it
runs (otherwise a second process fails to load Numba's cache). The hash makes
compiling the same spec twice in one process free: the module is reused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

__all__ = ["cache_dir", "load_module", "module_name"]

_loaded: dict[str, ModuleType] = {}


def cache_dir() -> Path:
    """``$GRADC_CACHE_DIR``, else ``~/.cache/gradc`` (created on demand)."""
    env = os.environ.get("GRADC_CACHE_DIR")
    path = Path(env) if env else Path.home() / ".cache" / "gradc"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = Path(tempfile.gettempdir()) / "gradc_cache"
        path.mkdir(parents=True, exist_ok=True)
    return path


def module_name(source: str) -> str:
    """The importable name :func:`load_module` gives ``source``: ``gradc_gen_<sha256[:16]>``."""
    return f"gradc_gen_{hashlib.sha256(source.encode()).hexdigest()[:16]}"


def load_module(source: str) -> ModuleType:
    """Import ``source`` as a module named by its hash (reused when already loaded)."""
    name = module_name(source)
    mod = _loaded.get(name)
    if mod is not None:
        return mod
    folder = cache_dir()
    path = folder / f"{name}.py"
    if not path.exists() or path.read_text() != source:
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    _loaded[name] = mod
    return mod
