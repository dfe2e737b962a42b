"""Where a training run writes, claimed so that no run ever replaces another's results.

- ``output_dir`` given: that directory. If it already holds a run (its config, metrics or
  checkpoint), the run is refused before anything is written, unless it resumes from a
  checkpoint in that very directory or ``overwrite=true`` says to replace it.
- ``output_dir`` null: ``outputs/<date>/<time>``, created with ``os.mkdir`` (atomic: two runs
  started in the same second get ``<time>``, ``<time>-1``, ...).
- A Hydra multirun (``-m``): one subdirectory per job, ``<output_dir or multirun/<date>/<time>>/<job>``.

Hydra itself writes nothing into the run directory (``hydra.output_subdir: null``; see
``conf/config.yaml``): this module opens the run's ``train.log``, and removes a directory it
created if the run fails before writing anything into it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Iterator, Optional

from omegaconf import DictConfig

from ..errors import SSVIConfigError

__all__ = ["RUN_FILES", "RunDir", "claim_run_dir", "run_log"]

#: Files whose presence means a directory holds a run's results.
RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.json", "train.log")
#: Files a run writes (besides its checkpoint); ``overwrite=true`` removes them first.
OUTPUT_FILES = RUN_FILES + (
    "overrides.yaml", "learning_curves.png", "density.png", "reliability.png", "posterior.png", "predictions.png",
    "shift.png", "best.pt",
)


class RunDir:
    """A claimed run directory: ``path``, and whether this run created it (``created``)."""

    def __init__(self, path: Path, created: bool) -> None:
        self.path, self.created = path, created

    def discard_if_empty(self) -> None:
        """Remove the directory (and empty parents this run created) if nothing was written."""
        if self.created:
            with contextlib.suppress(OSError):  # not empty, or gone: leave it
                self.path.rmdir()


def _hydra_job() -> Optional[tuple]:
    """``(multirun, job number, sweep dir)`` inside a Hydra app, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    if hc.mode != RunMode.MULTIRUN:  # (job.num is only set in a multirun)
        return False, None, None
    return True, hc.job.num, hc.sweep.dir


def _existing_run(path: Path, checkpoint_name: str) -> list:
    return [name for name in RUN_FILES + (checkpoint_name,) if (path / name).exists()]


def _resumes_from(path: Path, resume) -> bool:
    return bool(resume) and Path(resume).resolve().parent == path.resolve()


def _mkdir(path: Path) -> bool:
    """Create ``path`` (parents too); True if this call created it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()
        return True
    except FileExistsError:
        if not path.is_dir():
            raise SSVIConfigError(f"output_dir={str(path)!r} is a file, not a directory; choose another path") from None
        return False
    except OSError as exc:
        raise SSVIConfigError(
            f"output_dir={str(path)!r} cannot be created ({exc.strerror}); choose a writable path"
        ) from None


def _check_writable(path: Path) -> None:
    if not os.access(path, os.W_OK | os.X_OK):
        raise SSVIConfigError(f"output_dir={str(path)!r} is not writable; choose a writable path")


def claim_run_dir(cfg: DictConfig) -> RunDir:
    """The run directory of ``cfg`` (see the module docstring), created and checked.

    :raises SSVIConfigError: the directory holds another run (and neither ``resume`` into it nor
        ``overwrite=true`` was given), is a file, or cannot be written.
    """
    job = _hydra_job()
    if job is not None and job[0]:  # multirun: one subdirectory per job
        base = Path(cfg.output_dir) if cfg.output_dir else Path(job[2])
        explicit: Optional[Path] = base / str(job[1])
    else:
        explicit = Path(cfg.output_dir) if cfg.output_dir else None
    if explicit is None:
        stamp = Path("outputs") / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S")
        for i in range(10_000):
            path = stamp if i == 0 else stamp.with_name(f"{stamp.name}-{i}")
            if _mkdir(path):
                return RunDir(path, created=True)
        raise SSVIConfigError(f"could not create a new run directory next to {stamp}")
    created = _mkdir(explicit)
    _check_writable(explicit)
    found = _existing_run(explicit, cfg.checkpoint.name)
    if found and not _resumes_from(explicit, cfg.resume):
        if not cfg.overwrite:
            raise SSVIConfigError(
                f"output_dir={str(explicit)!r} already holds a run ({', '.join(found)}). Continue it with "
                f"resume={explicit / cfg.checkpoint.name}, choose another output_dir, or pass overwrite=true "
                "to replace it"
            )
        for name in OUTPUT_FILES + (cfg.checkpoint.name,):
            with contextlib.suppress(FileNotFoundError):
                (explicit / name).unlink()
    return RunDir(explicit, created)


def remove_stale_temporaries(path: Path) -> list:
    """Delete the hidden ``.<name>.*.tmp`` files that an interrupted atomic write left in ``path``
    (this run owns the directory, so none is being written); returns their names."""
    removed = []
    for tmp in path.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp.name)
    return removed


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[logging.Handler]:
    """Inside, every log record of the process at INFO or above also goes to ``path`` (appended);
    yields the file handler (for records meant for the file only)."""
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    previous_level = root.level
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)  # outside Hydra the root logger would drop INFO records
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.setLevel(previous_level)
        root.removeHandler(handler)
        handler.close()
