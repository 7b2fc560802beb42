"""Hugging Face MoE checkpoints in and out (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE); plain PyTorch + safetensors.

``import_hf(DIR, OUT)`` turns a HF folder into a moe-swarm checkpoint, ``export_hf(CKPT, OUT)`` the
reverse; ``load_hf_model`` / ``export_model`` do the same in memory; ``init_model`` is
``model.init_from=DIR`` of a training run; ``checkpoint_tokenizer`` is the tokenizer a checkpoint
carries. The console script is ``moe-swarm-convert`` (``moe_swarm.cli.convert``). See docs/models.md.
"""

from moe_swarm.hf.exporter import export_hf, export_model
from moe_swarm.hf.families import FAMILIES, HFError, choose_family, config_from_hf, config_to_hf
from moe_swarm.hf.importer import import_hf, load_hf_model
from moe_swarm.hf.init_from import init_model
from moe_swarm.hf.tokenizer_files import checkpoint_tokenizer

__all__ = [
    "FAMILIES",
    "HFError",
    "checkpoint_tokenizer",
    "choose_family",
    "config_from_hf",
    "config_to_hf",
    "export_hf",
    "export_model",
    "import_hf",
    "init_model",
    "load_hf_model",
]
