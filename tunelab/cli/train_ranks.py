"""`tunelab train --nproc N`: the run on N processes under PyTorch's launcher.

    tunelab train --model SmolLM2-135M-Instruct --train examples/travel/train.jsonl --nproc 2

The command checks the settings once, fixes what every rank must share (the run directory and the seed), and
starts `python -m torch.distributed.run --standalone --nproc_per_node N -m tunelab.cli.train_ranks CONFIG`
(through train/launch.py). Each rank runs the recipe on its share of every batch; rank 0 draws the progress and
prints the summary. Ctrl-C reaches torchrun, which asks every rank to stop: they agree on the step, rank 0 writes
the checkpoint, and `--resume` continues the run on any number of processes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from datetime import datetime

from ..train.launch import die_with_parent, launch_command, launch_environment, world_size

if __name__ == "__main__" and world_size() > 1:  # a rank dies with torchrun, even while torch still loads
    die_with_parent()

from rich.console import Console  # noqa: E402

from ..config import get_settings  # noqa: E402
from ..train.config import TrainConfig  # noqa: E402

out = Console()
err = Console(stderr=True)


def launch(config: TrainConfig, nproc: int, resume: bool) -> int:
    """Run `config` on `nproc` processes and wait; returns torchrun's exit status."""
    from ..models.catalog import resolve_model

    if config.out is None:
        name = f"{resolve_model(config.model).name}-{config.suffix or 'run'}-{datetime.now():%Y%m%d-%H%M%S}"
        config = config.model_copy(update={"out": get_settings().runs_dir / name})
    if config.seed is None:
        config = config.model_copy(update={"seed": random.SystemRandom().randrange(2**31)})
    command = launch_command(nproc, "tunelab.cli.train_ranks", config.model_dump_json(), *(["--resume"] * resume))
    proc = subprocess.Popen(command, env=launch_environment(dict(os.environ), nproc))
    # A Ctrl-C reaches torchrun too (same process group); it stops the ranks gracefully, so we only wait.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def summary(config: TrainConfig, result) -> None:
    """What the run wrote, or how to continue it: the last lines of `tunelab train`."""
    if result.stopped_early:
        err.print(f"[yellow]Stopped at step {result.steps}; checkpoint saved.[/yellow] Continue with: "
                  f"tunelab train … --out {result.out} --resume")
        return
    final = result.metrics
    said = f"train loss {final.get('train_loss', float('nan')):.3f}"
    if "full_valid_loss" in final:
        said += f", validation loss {final['full_valid_loss']:.3f}"
    out.print(f"[green]Done[/green] in {result.steps} steps ({said}).")
    out.print(f"  adapter:  {result.weights}" if config.method == "lora" else f"  model:    {result.weights}")
    out.print(f"  metrics:  {result.out / 'results.csv'}")
    out.print(f"  manifest: {result.out / 'manifest.json'}")


def rank_main(config_json: str, resume: bool) -> int:
    """One rank: train its share; rank 0 reports. A user error prints one line on rank 0, as without --nproc."""
    from ..errors import TunelabError
    from ..store.home import private_files
    from ..train.distributed import Quiet, join
    from ..train.launch import GroupLost
    from ..train.recipe import run
    from .progress import ConsoleReporter

    private_files()
    _quiet_libraries()
    group = join()
    main = group is None or group.main
    config = TrainConfig.model_validate_json(config_json)
    try:
        result = run(config, ConsoleReporter(err) if main else Quiet(), resume=resume, group=group)
    except TunelabError as exc:
        if main:
            err.print(f"[red]error:[/red] {exc.message}", highlight=False, soft_wrap=True)
        return 2
    except GroupLost:
        err.print(f"rank {group.rank}: another process of the run stopped; resume with --out {config.out} --resume")
        return 1
    finally:
        if group:
            group.leave()
    if main:
        summary(config, result)
    return 130 if result.stopped_early else 0


def _quiet_libraries() -> None:
    """The same library chatter `tunelab` silences (main.py), in each rank's own interpreter."""
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1], "--resume" in sys.argv[2:]))
