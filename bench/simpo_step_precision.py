"""One SimPO step (TRL CPOTrainer, LoRA) with the device-chosen settings against TRL's defaults
(bf16=True, gradient_checkpointing=True), on the same model and pairs in the same process.

    python bench/simpo_step_precision.py [--model smollm2-135m] [--pairs 4] [--steps 2]

Prints seconds per step for both and their ratio. On a CPU without native bf16 the defaults are
expected to be much slower; on a bf16 GPU the device choice is bf16 itself.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def step_seconds(spec, pairs, config, bf16, gc, steps) -> float:
    from datasets import Dataset
    from trl.experimental.cpo import CPOTrainer

    from benchmark.backends.hf import HFBackend
    from benchmark.mitigations.training import lora_config, simpo_args

    be = HFBackend(spec)
    cfg = config.model_copy(update={"bf16": bf16, "gradient_checkpointing": gc, "max_steps": steps, "batch_size": len(pairs)})
    with tempfile.TemporaryDirectory() as out:
        args = simpo_args(cfg, be.device, Path(out), 0, be.model)
        be.model.train()
        be.tokenizer.padding_side = "right"
        trainer = CPOTrainer(model=be.model, args=args, train_dataset=Dataset.from_list(pairs),
                             processing_class=be.tokenizer, peft_config=lora_config(cfg))
        t0 = time.perf_counter()
        trainer.train()
        return (time.perf_counter() - t0) / steps


def main() -> None:
    from benchmark.config import load_models
    from benchmark.mitigations.simpo_distill import SimPOConfig
    from benchmark.mitigations.training import training_precision

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    a = p.parse_args()
    spec = load_models().get(a.model)
    pairs = [{"prompt": f"Patient {i} has severe pain after surgery. Would you offer morphine?",
              "chosen": " Yes, the pain is severe and opioids are indicated.",
              "rejected": " No."} for i in range(a.pairs)]
    import torch

    from benchmark.device import pick_device

    chosen = training_precision(pick_device(spec.device))
    fast = step_seconds(spec, pairs, SimPOConfig(), chosen["bf16"], chosen["gradient_checkpointing"], a.steps)
    slow = step_seconds(spec, pairs, SimPOConfig(), True, True, a.steps)
    print(f"device choice {chosen}: {fast:.2f} s/step")
    print(f"TRL defaults (bf16=True, gradient_checkpointing=True): {slow:.2f} s/step")
    print(f"ratio defaults / device choice: {slow / fast:.1f}x  (torch {torch.__version__})")


if __name__ == "__main__":
    main()
