"""Saving and loading: architectures as JSON, parameters as safetensors, export to ONNX (docs/user-guide/saving.md)."""

from .json_format import FORMAT_VERSION, load_model, model_from_dict, model_to_dict, save_model
from .onnx_export import export_onnx
from .params_io import STATE_PREFIX, load_params, load_state, read_metadata, save_params
from .registry import layer_class, layer_name, register_layer, registered_layers

__all__ = [
    "FORMAT_VERSION",
    "STATE_PREFIX",
    "export_onnx",
    "layer_class",
    "layer_name",
    "load_model",
    "load_params",
    "load_state",
    "model_from_dict",
    "model_to_dict",
    "read_metadata",
    "register_layer",
    "registered_layers",
    "save_model",
    "save_params",
]
