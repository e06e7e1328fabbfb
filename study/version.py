__version__ = "0.6.0"  # the release; pyproject.toml says the same
