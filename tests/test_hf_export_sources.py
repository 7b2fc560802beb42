"""``moe-swarm-convert to-hf`` takes every kind of checkpoint the project writes: a sharded checkpoint
folder (trainer=model_parallel's layout, written here by ``save_sharded`` in one process) and a swarm
checkpoint (the model plus its checker). transformers loads each result offline with our logits."""

from __future__ import annotations

import torch
import transformers  # a dev dependency: these tests must run, never skip

from moe_swarm.cli import convert
from moe_swarm.model import MoETransformer, TransformerConfig
from moe_swarm.store.checkpoint import save_model_checkpoint
from moe_swarm.store.sharded import save_sharded
from moe_swarm.swarm import StepSwarmConfig
from moe_swarm.swarm.checker import StepChecker
from moe_swarm.swarm.state import step_swarm_state

CFG = dict(vocab_size=264, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
CFG["moe"] = dict(num_experts=4, d_ff=32)


def _model() -> MoETransformer:
    torch.manual_seed(0)
    model = MoETransformer(TransformerConfig.from_dict(CFG)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


def _to_hf(src, out, capsys) -> tuple[int, str]:
    """The console script's main, in this process (its exit status and stderr)."""
    rc = convert.main(["to-hf", str(src), str(out)])
    return rc, capsys.readouterr().err


def _same_logits(model: MoETransformer, folder) -> float:
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    idx = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return (theirs(input_ids=idx).logits - model(idx).logits).abs().max().item()


def test_a_sharded_checkpoint_folder_exports_and_transformers_loads_it(tmp_path, capsys):
    model = _model()
    folder = tmp_path / "last.ckpt"  # a folder, as trainer=model_parallel writes it
    save_sharded(folder, model, meta={"hyper_parameters": {"model": model.cfg.to_dict()}, "global_step": 7})
    assert folder.is_dir()
    rc, err = _to_hf(folder, tmp_path / "hf", capsys)
    assert rc == 0, err
    assert _same_logits(model, tmp_path / "hf") < 1e-5


def test_a_swarm_checkpoint_exports_its_generator_and_says_the_checker_stays(tmp_path, capsys):
    model = _model()
    checker = StepChecker(_model(), hidden=16)
    state = step_swarm_state(checker, StepSwarmConfig())
    ckpt = tmp_path / "swarm.ckpt"  # the layout moe-swarm-swarm-train writes (write_swarm_checkpoint)
    save_model_checkpoint(ckpt, model, {"global_step": 5}, extra={"swarm_state": state})
    rc, err = _to_hf(ckpt, tmp_path / "hf", capsys)
    assert rc == 0, err
    assert "swarm checkpoint: the generator was exported" in err
    assert _same_logits(model, tmp_path / "hf") < 1e-5
