"""The training progress display: a live bar with step, epoch, loss, tokens/s and ETA, or plain lines in logs."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..train.metrics import StepMetrics


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


class ConsoleReporter:
    """Draws a progress bar on a terminal; writes one line per step (or every `every` steps) elsewhere."""

    def __init__(self, console: Console | None = None, every: int = 10):
        self.console = console or Console(stderr=True)
        self.every = every
        self.progress: Progress | None = None
        self.task = None

    def start(self, hyperparameters: dict, total_steps: int, first_step: int) -> None:
        shown = ", ".join(f"{k}={v}" for k, v in hyperparameters.items())
        self.console.print(f"[bold]Hyperparameters[/bold] (auto values resolved): {shown}")
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
                TextColumn("epoch {task.fields[epoch]} · loss {task.fields[loss]} · {task.fields[tps]} tok/s · "
                           "ETA {task.fields[eta]}"),
                TimeElapsedColumn(), console=self.console)
            self.task = self.progress.add_task("train", total=total_steps, completed=first_step, epoch=1,
                                               loss="–", tps="–", eta="–")
            self.progress.start()

    def step(self, m: StepMetrics) -> None:
        extra = f" · valid {m.valid_loss:.3f}" if m.valid_loss is not None else ""
        if m.full_valid_loss is not None and m.full_valid_mean_token_accuracy is not None:
            extra += f" · full valid {m.full_valid_loss:.3f} ({m.full_valid_mean_token_accuracy:.1%} acc)"
        elif m.full_valid_loss is not None:  # DPO: the validation pairs' reward margin
            extra += f" · full valid {m.full_valid_loss:.3f} (margin {m.extra['full_valid_reward_margin']:.2f})"
        scores = (f"acc {m.train_mean_token_accuracy:.1%}" if m.train_mean_token_accuracy is not None else
                  f"margin {m.extra['train_reward_margin']:.2f} · reward acc {m.extra['train_reward_accuracy']:.0%}")
        if self.progress is not None:
            self.progress.update(self.task, completed=m.step, epoch=m.epoch, loss=f"{m.train_loss:.3f}",
                                 tps=f"{m.tokens_per_second:.0f}", eta=_eta(m.eta_seconds))
            if m.full_valid_loss is not None:
                self.progress.console.print(f"epoch {m.epoch} done at step {m.step}{extra}")
        elif m.step % self.every == 0 or m.step == m.total_steps or m.full_valid_loss is not None:
            self.console.print(f"step {m.step}/{m.total_steps} · epoch {m.epoch} · loss {m.train_loss:.3f} · "
                               f"{scores}{extra} · {m.tokens_per_second:.0f} tok/s · "
                               f"ETA {_eta(m.eta_seconds)}")

    def message(self, text: str) -> None:
        self.console.print(text)

    def checkpoint(self, step: int, path: Path, metrics: dict) -> None:
        self.console.print(f"checkpoint at step {step}: {path}")

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
