__all__ = ["EdgeEigenLoraError"]
"""One exception type for user-facing problems, so callers and the CLI can tell them from bugs."""


class EdgeEigenLoraError(ValueError):
    """Bad input or an impossible request. The message names the file or field and the fix."""
