"""Training settings chosen by hardware, and the SimPO trainer (TRL's CPOTrainer, loss_type="simpo").

TRL's ``CPOConfig`` defaults to ``bf16=True`` and ``gradient_checkpointing=True``. On a CPU without
native bf16 a 4-pair SimPO step took 68 s that way against 2.1 s in float32 without checkpointing,
so both are chosen here: bf16 only where the hardware runs it natively, checkpointing only when the
activations would not fit in free accelerator memory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..device import bf16_native


def activation_bytes(model, batch_size: int, max_length: int) -> int:
    """Rough activation memory of one training step without checkpointing (chosen + rejected rows,
    ~34 values of hidden size per token and layer, as in the usual transformer estimate)."""
    cfg = model.config
    return 2 * batch_size * max_length * cfg.num_hidden_layers * cfg.hidden_size * 34 * 2


def training_precision(device: torch.device, model=None, batch_size: int = 4, max_length: int = 256,
                       bf16: bool | None = None, gradient_checkpointing: bool | None = None) -> dict:
    """``{"bf16": ..., "gradient_checkpointing": ...}`` for this device; explicit values win."""
    if bf16 is None:
        bf16 = bf16_native(device)
    if gradient_checkpointing is None:
        gradient_checkpointing = False
        if device.type == "cuda" and model is not None:
            free, _ = torch.cuda.mem_get_info(device)
            gradient_checkpointing = activation_bytes(model, batch_size, max_length) > 0.5 * free
    return {"bf16": bool(bf16), "gradient_checkpointing": bool(gradient_checkpointing)}


def simpo_args(config, device: torch.device, out_dir: Path, seed: int, model=None):
    """The CPOConfig for SimPO: loss_type="simpo", cpo_alpha=0, beta and simpo_gamma explicit
    (TRL's simpo_gamma is gamma itself, not gamma/beta)."""
    from trl.experimental.cpo import CPOConfig

    precision = training_precision(device, model, config.batch_size, config.max_length,
                                   config.bf16, config.gradient_checkpointing)
    return CPOConfig(
        output_dir=str(out_dir),
        loss_type="simpo",
        cpo_alpha=0.0,
        beta=config.beta,
        simpo_gamma=config.simpo_gamma,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        max_length=config.max_length,
        seed=seed,
        data_seed=seed,
        use_cpu=device.type == "cpu",
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        remove_unused_columns=False,
        **precision,
    )


def lora_config(config):
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM", bias="none")
