"""``python -m AgentOperatingSystem.messaging.cli``."""

import sys

from .main import main

sys.exit(main())
