__version__ = "0.7.0"  # the release; pyproject.toml says the same
