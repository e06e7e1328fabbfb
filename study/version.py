__version__ = "0.7.4"  # the release; pyproject.toml says the same
