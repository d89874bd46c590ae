"""Command-line tools behind ``caffepy <command>`` (Caffe's tools/*.cpp and examples/*.cpp)."""


class ToolError(ValueError):
    """A user mistake in a tool invocation (bad file, existing output, bad flag value)."""
