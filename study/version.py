__version__ = "0.7.1"  # the release; pyproject.toml says the same
