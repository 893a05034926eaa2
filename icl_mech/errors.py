"""The one error type of the package."""


class IclMechError(ValueError):
    """Bad input, raised before any forward pass; the message names what was wrong."""
