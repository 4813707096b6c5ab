"""The local developer stack (``python local_runner.py local``, what ``./dev run`` runs).

What a deployment configures, started here instead: a private nats-server, stand-ins for the
services left at their default URLs, the keyword mock for the LLM. The production bridge
(runner/) never imports this package.
"""
