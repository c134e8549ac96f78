"""vmcore's built-in device plugins, one module per device family.

They are registered through the ``vmcore`` entry-point group in pyproject.toml,
exactly as a third-party package registers its own.
"""
