"""Make ``import torchvision`` work when its C extension cannot load.

torchvision wheels on the package index are CUDA builds. Next to a CPU-only torch their ``_C.so``
fails to load; torchvision tolerates that, but then registers fake (meta) kernels for
``torchvision::nms`` and ``torchvision::qnms`` and crashes with "operator torchvision::nms does not
exist". Lightning and torchmetrics import torchvision when it is installed, so they crash too.

The fix: if the extension really cannot load, define the two operator *schemas* (no kernels) before
torchvision is imported. Models, transforms and datasets then work; ``torchvision.ops.nms`` and
JPEG/PNG decoding through ``torchvision.io`` do not (ct-tune uses neither).

This module is imported first by ``ct_tune/__init__.py``, so every ct-tune entry point is covered.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

# Kept alive for the life of the process: dropping the Library object unregisters the schemas.
_SCHEMA_LIBRARY: torch.library.Library | None = None

_MISSING_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _extension_loads(package_dir: Path) -> bool:
    for candidate in sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd")):
        try:
            torch.ops.load_library(str(candidate))
            return True
        except OSError:
            return False
    return False


def ensure_torchvision_importable() -> None:
    """Define the missing torchvision operator schemas if (and only if) torchvision needs them."""
    global _SCHEMA_LIBRARY
    if _SCHEMA_LIBRARY is not None or "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return  # not installed: nothing to fix
    if _extension_loads(Path(spec.origin).parent):
        return  # a matching build: torchvision registers its own operators
    library = torch.library.Library("torchvision", "DEF")
    for schema in _MISSING_SCHEMAS:
        library.define(schema)
    _SCHEMA_LIBRARY = library


ensure_torchvision_importable()
