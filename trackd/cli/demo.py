"""``trackd demo``: start or reuse the daemon, train a toy model in several processes, and
print what the views hold afterwards.

The trainers are separate processes (``multiprocessing`` with spawn) that import only the SDK,
exactly as user training scripts do. Heavy imports stay inside functions.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import click

__all__ = ["demo_command"]

_LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def _train(repo: str, lr: float, steps: int, seed: int) -> str:
    """One toy training: a noisy exponential decay of the loss, tracked every step."""
    import random

    import trackd

    rng = random.Random(seed)
    run = trackd.Run(repo=repo, experiment="demo")
    run.name = f"lr={lr:g}"
    run["hparams"] = {"lr": lr, "batch_size": 64, "optimizer": "sgd", "seed": seed}
    rate = max(0.5, 6.0 + 1.5 * math.log10(lr))  # larger learning rates converge faster
    for step in range(steps):
        progress = step / steps
        loss = 2.5 * math.exp(-rate * progress) + 0.05 + rng.gauss(0, 0.02)
        run.track(loss, name="loss", step=step, context={"subset": "train"})
        run.track(1.0 - loss / 2.6, name="accuracy", step=step, context={"subset": "train"})
        if step % 10 == 0:
            val = loss * 1.1 + rng.gauss(0, 0.01)
            run.track(val, name="loss", step=step, context={"subset": "val"})
    run.close()
    return run.hash


def _daemon_state() -> tuple[Path, bool]:
    from trackd.sdk._connect import socket_answers
    from trackd.wire.address import socket_path

    path = socket_path()
    return path, socket_answers(path)


@click.command("demo")
@click.option(
    "--repo",
    "repo_path",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("trackd-demo"),
    show_default=True,
    help="Repository to log into (created if missing).",
)
@click.option("--processes", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--steps", type=click.IntRange(1, 10_000_000), default=20_000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo_command(repo_path: Path, processes: int, steps: int, as_json: bool) -> None:
    """Log a demo training from several processes and show what was stored.

    Starts the daemon if none answers (the SDK does this by itself), runs PROCESSES toy
    trainings in parallel, each tracking loss and accuracy for STEPS steps, then reads every
    run back from the views and prints params, metrics and throughput.
    """
    import multiprocessing

    import trackd

    repo_path.mkdir(parents=True, exist_ok=True)
    sock, was_running = _daemon_state()
    say = (lambda *_a, **_k: None) if as_json else click.echo
    say(f"daemon: {'reusing the one' if was_running else 'starting one'} at {sock}")
    say(f"training {processes} runs x {steps:,} steps into {repo_path.resolve()} ...")

    ctx = multiprocessing.get_context("spawn")
    jobs = [
        (str(repo_path), _LEARNING_RATES[i % len(_LEARNING_RATES)], steps, i)
        for i in range(processes)
    ]
    t0 = time.perf_counter()
    with ctx.Pool(processes) as pool:
        hashes = pool.starmap(_train, jobs)
    elapsed = time.perf_counter() - t0

    repo = trackd.Repo(str(repo_path))
    rows: list[dict[str, Any]] = []
    total_points = 0
    for h in hashes:
        run = repo.get_container(h)
        metrics = {}
        for seq in run.sequences:
            steps_arr, values = seq.numpy()
            total_points += len(steps_arr)
            ctx_text = ",".join(f"{k}={v}" for k, v in sorted(seq.context.items()))
            metrics[f"{seq.name}[{ctx_text}]"] = {
                "points": len(steps_arr),
                "last": float(values[-1]) if len(values) else None,
            }
        rows.append(
            {
                "hash": h,
                "name": run.name,
                "lr": run["hparams"]["lr"],
                "active": run.active,
                "metrics": metrics,
            }
        )
    summary = {
        "repo": str(repo_path.resolve()),
        "runs": rows,
        "points": total_points,
        "seconds": round(elapsed, 3),
        "points_per_second": round(total_points / elapsed) if elapsed else None,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo("")
    click.echo(
        f"{'run':<26}{'lr':>8}  {'loss[train]':>12}{'loss[val]':>11}{'acc[train]':>12}{'points':>9}"
    )
    for r in rows:
        m = r["metrics"]

        def last(key: str, m: dict[str, Any] = m) -> str:
            v = m.get(key, {}).get("last")
            return "-" if v is None else f"{v:.4f}"

        pts = sum(x["points"] for x in m.values())
        click.echo(
            f"{r['hash']:<26}{r['lr']:>8g}  {last('loss[subset=train]'):>12}"
            f"{last('loss[subset=val]'):>12}{last('accuracy[subset=train]'):>12}{pts:>12,}"
        )
    click.echo("")
    click.echo(
        f"{total_points:,} points from {processes} processes, durable and queryable "
        f"{elapsed:.2f} s after the trainers started (process start-up included)"
    )
    click.echo(f"read them back: trackd runs ls --repo {repo_path}")
