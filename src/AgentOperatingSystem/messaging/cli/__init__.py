"""The ``aos-messaging`` command line (see :mod:`.main` for its commands and exit codes)."""

from .main import main
from .output import CLIError, Progress
from .parser import build_parser
from .serve import Node

__all__ = ["CLIError", "Node", "Progress", "build_parser", "main"]
