"""The float dtype rule, threads and in-place writes on NumPy (issue 13): the core's reliability checks."""

from mithril.testing.reliability import BackendReliability


class TestNumpyReliability(BackendReliability):
    backend_name = "numpy"
