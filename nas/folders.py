"""The files of a servable DeciLM folder besides its weights: what export and the cost probes both write.

config.json (a DeciLM config, see decilm.HeteroConfig.to_decilm_json) with the config class file its
`auto_map` names, and the files a child takes from its parent's folder as they are. Apart from
export.py so that costs.py (which export's command reaches through the MIP) need not import it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ponder.engine import configuration_decilm
from ponder.nas.decilm import HeteroConfig
from ponder.tasks import MODEL_FILE

# What a child takes from its parent's folder as it is, where the parent has it: the tokenizer, the
# chat template, the generation config, and ponder.json (the task the parent declares).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", MODEL_FILE)


def write_config(folder: Path, cfg: HeteroConfig) -> None:
    """config.json and the config class file it points AutoConfig to."""
    (folder / "config.json").write_text(json.dumps(cfg.to_decilm_json(), indent=2) + "\n")
    shutil.copy(configuration_decilm.__file__, folder / "configuration_decilm.py")


def copy_tokenizer(src: str | Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (Path(src) / name).exists():
            shutil.copy(Path(src) / name, dst / name)
