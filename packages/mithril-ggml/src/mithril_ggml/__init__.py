"""GGML backend plugin for Mithril (ggml itself loads on first attribute access)."""

from typing import Any

__all__ = ["GGMLBackend", "calibrate", "save_gguf", "load_gguf", "GGUFParams", "quantization_report"]

_HOMES = {
    "GGMLBackend": "backend",
    "calibrate": "calibration",
    "save_gguf": "gguf_io",
    "load_gguf": "gguf_io",
    "GGUFParams": "gguf_io",
    "quantization_report": "lowering",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'mithril_ggml' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
