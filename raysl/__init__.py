"""raysl: Ray-based search and scaling for contrastive and self-supervised learning.

`raysl.load_encoder(path)` loads an encoder written by `raysl export` (see `raysl.export`);
it is imported on first use, so `import raysl` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_encoder"]


def __getattr__(name: str) -> Any:
    if name == "load_encoder":
        from raysl.export import load_encoder

        return load_encoder
    raise AttributeError(f"module 'raysl' has no attribute {name!r}")
