"""Training settings chosen by hardware, the SimPO trainer (TRL's CPOTrainer, loss_type="simpo"), and
the few multi-process facts ``fairbench mitigate`` needs under ``accelerate launch`` or ``torchrun``.

TRL's ``CPOConfig`` defaults to ``bf16=True`` and ``gradient_checkpointing=True``. On a CPU without
native bf16 a 4-pair SimPO step took 68 s that way against 2.1 s in float32 without checkpointing,
so both are chosen here: bf16 only where the hardware runs it natively, checkpointing only when the
activations would not fit in free accelerator memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import TrainerCallback

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


# ----- several processes (accelerate launch / torchrun) -----
# The trainer distributes itself through accelerate; fairbench only has to keep the non-training work
# (data preparation, artifact, registration) on the main process. accelerate's PartialState is the
# one process group: the trainer reuses it.

def launched() -> bool:
    """Whether this process is one of several started by ``accelerate launch`` or ``torchrun``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def distributed_state():
    """accelerate's PartialState (initialises the process group: gloo on CPU, nccl on CUDA; also sets
    this process's CUDA device to its local rank); None when not launched with several processes."""
    if not launched():
        return None
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    state = distributed_state()
    return state is None or state.is_main_process


def process_index() -> int:
    state = distributed_state()
    return 0 if state is None else state.process_index


def barrier() -> None:
    state = distributed_state()
    if state is not None:
        state.wait_for_everyone()


class BatchCounter(TrainerCallback):
    """Counts the optimizer steps this process ran (each consumes this process's own batch)."""

    def __init__(self):
        self.batches = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.batches += 1


class StepProgress(TrainerCallback):
    """Optimizer steps and the latest training loss on a rich bar (:mod:`benchmark.progress`), in
    place of the Trainer's own printer / tqdm callbacks (see ``attach_progress``). Only the local
    main process draws; ``quiet`` draws nothing (the bar still counts, for tests)."""

    def __init__(self, label: str, quiet: bool = True):
        self.label, self.quiet = label, quiet
        self.progress, self.task = None, None

    def on_train_begin(self, args, state, control, **kwargs):
        from ..progress import training_progress

        self.progress = training_progress(self.quiet or not state.is_local_process_zero)
        self.progress.start()
        self.task = self.progress.add_task(self.label, total=state.max_steps or None, loss="")

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.progress.update(self.task, loss=f"loss {float(logs['loss']):.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        self.progress.stop()


def attach_progress(trainer, label: str, quiet: bool) -> StepProgress:
    """Show ``trainer``'s steps and loss on fairbench's bar; drop the Trainer's printer (one dict per
    logging step on stdout) and tqdm bar."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    bar = StepProgress(label, quiet)
    trainer.add_callback(bar)
    return bar


def gather_counts(directory: Path, steps: int, batches_per_epoch: int) -> list[dict]:
    """Each process writes ``rank<i>.json`` (its steps and the size of its data shard in batches); after
    a barrier the main process reads them all. Returns the list (main process) or [] (others)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rank = process_index()
    (directory / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "steps": steps, "batches_per_epoch": batches_per_epoch}))
    barrier()
    if not is_main_process():
        return []
    return [json.loads(p.read_text()) for p in sorted(directory.glob("rank*.json"))]
