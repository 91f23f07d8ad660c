"""``fairbench mitigate`` shows training steps and the loss: the TrainerCallback of
benchmark.mitigations.training on a tiny transformers training run."""

from __future__ import annotations

import torch


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, 200, (n, 12), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_step_progress_receives_steps_and_loss(tmp_path, tiny_llama_dir, capsys):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from benchmark.mitigations.training import StepProgress, attach_progress

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, logging_steps=1,
                             report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=_Rows(6))
    bar = attach_progress(trainer, "tiny training", quiet=True)
    assert not any(isinstance(cb, PrinterCallback) for cb in trainer.callback_handler.callbacks)
    seen: list[tuple[int, str]] = []
    update = StepProgress.on_step_end

    def recording(self, *a, **kw):
        update(self, *a, **kw)
        task = self.progress.tasks[0]
        seen.append((int(task.completed), task.fields["loss"]))

    StepProgress.on_step_end = recording
    try:
        trainer.train()
    finally:
        StepProgress.on_step_end = update
    task = bar.progress.tasks[0]
    assert task.description == "tiny training" and task.total == 3 and task.completed == 3
    assert [s for s, _ in seen] == [1, 2, 3]  # the bar moves per optimizer step
    assert task.fields["loss"].startswith("loss ") and float(task.fields["loss"].split()[1]) > 0
    assert "'loss'" not in capsys.readouterr().out  # the Trainer's printer no longer prints log dicts
