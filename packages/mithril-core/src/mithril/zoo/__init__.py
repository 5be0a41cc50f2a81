"""Reference models built from Mithril's layers: Hugging Face weight mapping and generation with a KV cache.

`mithril.zoo.gpt2`, `mithril.zoo.llama` (and the general pieces in `mithril.zoo.generation`) are pure logical models and
NumPy; importing them imports no framework.
"""

from __future__ import annotations

__all__ = ["generation", "gpt2", "llama"]
