"""The agent runtime's core: importable without any web framework or cloud SDK."""
