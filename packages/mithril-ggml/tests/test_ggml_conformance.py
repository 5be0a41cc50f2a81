"""The core's conformance kit on GGML; refused capabilities show up as skips with ggml's reason."""

from mithril.testing.conformance import BackendConformance


class TestGGMLConformance(BackendConformance):
    backend_name = "ggml"
