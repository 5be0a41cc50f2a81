"""The tracer backend passes the core's conformance kit, like the first-party backends."""

from mithril.testing.conformance import BackendConformance


class TestConformance(BackendConformance):
    backend_name = "tracer"
