"""ponder's built-in checkpoints, as package data: the checkout's models/ in an editable install,
site-packages/ponder/models from a wheel (which carries the default model and its contrastive pair)."""

from importlib import resources
from pathlib import Path

MODELS = Path(str(resources.files("ponder.models")))
DEFAULT_MODEL = str(MODELS / "ponder-small")


def default_models() -> list[str]:
    """ponder-small, with the contrastive models critical_tokens scores with when they are there."""
    contrast = [f"{DEFAULT_MODEL}-{k}" for k in ("pos", "neg")]
    return [DEFAULT_MODEL, *(m for m in contrast if Path(m, "config.json").exists())]
