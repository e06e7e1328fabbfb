__version__ = "0.5.0"  # the release; pyproject.toml says the same
