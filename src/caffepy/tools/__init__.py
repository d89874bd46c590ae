"""Command-line tools behind ``caffepy <command>`` (Caffe's tools/*.cpp and examples/*.cpp)."""

from ..errors import ToolError  # noqa: F401
