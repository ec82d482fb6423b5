"""One exception type for every user-facing error, so nodes can show it as-is."""


class VideoForgeError(ValueError):
    """A bad input (file, value, combination) with a message that says what to change."""


# ComfyUI names an exception by module path in its error dialog; for a custom node that is the
# whole install path. A short, stable name reads better: "VideoForge.VideoForgeError".
VideoForgeError.__module__ = "VideoForge"
