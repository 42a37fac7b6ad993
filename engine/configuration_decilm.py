"""The DeciLM ("nemotron-nas") config class, copied into every exported checkpoint.

transformers has no nemotron-nas config, so config.json's `auto_map` points
AutoConfig at this file (loaded with trust_remote_code). vLLM's nemotron_nas
model reads `block_configs[i].attention.no_op` as attributes and tests
`hasattr(block.ffn, "ffn_mult")`, so each entry becomes a dict whose keys also
read as attributes (a missing key raises AttributeError) and which still
serialises as plain JSON. Self-contained: it imports nothing but transformers.
"""

from transformers import LlamaConfig


class BlockDict(dict):
    """A dict whose keys read as attributes too."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _wrap(value):
    if isinstance(value, dict):
        return BlockDict({k: _wrap(v) for k, v in value.items()})
    return value


class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"

    def __init__(self, block_configs=None, **kwargs):
        self.block_configs = [_wrap(b) for b in (block_configs or [])]
        super().__init__(**kwargs)
