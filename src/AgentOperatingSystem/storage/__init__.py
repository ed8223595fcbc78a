"""Storage used by conversations, the agent registry and the key ring."""
