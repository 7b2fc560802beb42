"""Hugging Face MoE checkpoints in and out (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE); plain PyTorch + safetensors.

``import_hf(DIR, OUT)`` turns a HF folder into a moe-swarm checkpoint, ``export_hf(CKPT, OUT)`` the
reverse; ``load_hf_model`` / ``export_model`` do the same in memory. The console script is
``moe-swarm-convert`` (``moe_swarm.convert``). See docs/models.md.
"""

from moe_swarm.hf.exporter import export_hf, export_model
from moe_swarm.hf.families import FAMILIES, HFError, choose_family, config_from_hf, config_to_hf
from moe_swarm.hf.importer import import_hf, load_hf_model

__all__ = [
    "FAMILIES",
    "HFError",
    "choose_family",
    "config_from_hf",
    "config_to_hf",
    "export_hf",
    "export_model",
    "import_hf",
    "load_hf_model",
]
