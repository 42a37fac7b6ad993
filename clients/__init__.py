"""A typed Python client for ponder's extensions (strategies, traces)."""

from ponder.clients.ponder_client import AsyncPonderClient, PonderClient, PonderError, PonderResult, StrategyInfo

__all__ = ["AsyncPonderClient", "PonderClient", "PonderError", "PonderResult", "StrategyInfo"]
