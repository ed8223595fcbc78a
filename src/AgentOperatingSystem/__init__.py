"""Agent Operating System: the messaging layer (``AgentOperatingSystem.messaging``)."""
