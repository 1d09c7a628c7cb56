"""The one exception type weightshop raises for bad input.

Every message names the file, field or value at fault and says what would be accepted; the CLI prints
it without a traceback and exits with status 2.
"""


class WeightshopError(ValueError):
    """Bad input or an unusable artifact, explained for a person."""
