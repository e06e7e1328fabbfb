__version__ = "0.7.3"  # the release; pyproject.toml says the same
