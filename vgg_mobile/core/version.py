"""The package version (the same as `pyproject.toml`'s), recorded in every manifest."""

__version__ = "0.1.0"
