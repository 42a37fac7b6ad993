"""ponder's HTTP edge: OpenAI protocol, routes, errors, metrics, CLI."""
