"""One exception type for every user-facing error, so nodes can show it as-is."""


class VideoForgeError(ValueError):
    """A bad input (file, value, combination) with a message that says what to change."""
