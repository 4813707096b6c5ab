"""The console on the runner's port: live invocations, agents, dead letters and a chat box (docs/console.md)."""
