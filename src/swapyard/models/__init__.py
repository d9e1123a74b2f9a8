"""The built-in default's model files: taken from PyPI packages or written locally,
never downloaded from a model hub."""
