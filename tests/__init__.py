"""kubetune test suite (importable so tests can share tests.support)."""
