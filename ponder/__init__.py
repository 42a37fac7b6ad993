"""ponder: an OpenAI-compatible server on vLLM where each request picks a test-time reasoning strategy.

The repository's top-level folders install as this one namespace:
ponder.server, ponder.strategies, ponder.tasks, ponder.trainers, ponder.nas,
ponder.clients, and ponder.models (the built-in checkpoints, as package data).
"""

__version__ = "0.1.0"
