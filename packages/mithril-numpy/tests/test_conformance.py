"""The NumPy backend runs the core's conformance kit like every other backend."""

from mithril.testing.conformance import BackendConformance


class TestNumpyConformance(BackendConformance):
    backend_name = "numpy"
