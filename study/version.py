__version__ = "0.7.2"  # the release; pyproject.toml says the same
