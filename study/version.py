__version__ = "0.4.0"  # the release; pyproject.toml says the same
