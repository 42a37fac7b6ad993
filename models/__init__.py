"""ponder's built-in checkpoints (package data): one folder per model, each with a MODEL_CARD.md."""
