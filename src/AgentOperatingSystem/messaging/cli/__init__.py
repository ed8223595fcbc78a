"""The ``aos-messaging`` command line."""

from .main import CLIError, Node, Progress, build_parser, main

__all__ = ["CLIError", "Node", "Progress", "build_parser", "main"]
