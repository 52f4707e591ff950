"""Checkpoints: atomic writes, DeePMD-kit style names and the ``checkpoint`` pointer file.

``<save_ckpt>-<step>.pt`` holds a dict (see :func:`make_checkpoint`); ``<save_ckpt>.pt`` is
a symlink to the newest one and the text file ``checkpoint`` names it, as DeePMD-kit does:
training writes ``checkpoint`` in the working folder with the path as ``save_ckpt`` gives it
(``run/model.ckpt-2.pt`` for ``save_ckpt`` ``run/model.ckpt``; an absolute path stays
absolute), so ``dpa3 freeze`` / ``dp freeze`` with the default ``-c .`` find it; a pointer is
read relative to its own folder.  Every file is written to a temporary name in the same folder
(``.<name>.tmp-<pid>``), flushed to disk and moved into place with ``os.replace``, so a crash
or a ``kill -9`` during a save leaves the previous checkpoint and pointer intact; the
temporary file such a crash leaves is removed by the next save.  Retention follows
DeePMD-kit's ``max_ckpt_keep``: after a save, numbered checkpoints above the step just saved
(left by a longer earlier run in the same folder) are removed and the newest
``max_ckpt_keep`` are kept; a value below 1 keeps every file (tests/data/dp_train/
``ckpt_reference.json`` holds what ``dp --pt train`` leaves).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import __version__
from ..atomic_file import TMP_PATTERN, atomic_open, fsync_dir, symlink, write_text
from ..errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from ..config.train import TrainingConfig

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "dpa3.checkpoint"
CHECKPOINT_VERSION = 1
#: The pointer file training updates: in the working folder, as ``dp`` writes it.
POINTER = "checkpoint"


def make_checkpoint(
    *,
    step: int,
    model_config: dict[str, Any],
    input_config: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    rng_state: dict[str, Any] | None,
    sampler_state: dict[str, Any] | None,
) -> dict[str, Any]:
    """The checkpoint dict (plain types and tensors only, so ``weights_only`` loading works)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "dpa3_version": __version__,
        "torch_version": str(torch.__version__),
        "step": int(step),
        "model_config": model_config,
        "input": input_config,
        "model": model_state,
        "optimizer": optimizer_state,
        "rng": rng_state,
        "sampler": sampler_state,
    }


def rng_state() -> dict[str, Any]:
    """The ``rng`` entry of a checkpoint (torch's generator)."""
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any] | None) -> None:
    """Inverse of :func:`rng_state` (``None``: leave the generator as it is)."""
    if state and "torch" in state:
        torch.set_rng_state(state["torch"])


def remove_stale_temporaries(folder: Path, names: Callable[[str], bool]) -> list[Path]:
    """Remove the temporary files (``.<name>.tmp-<pid>``) that other processes left for the
    target names accepted by ``names`` (a save killed mid-write; only one process writes a
    run's checkpoints, possibly on another node of a shared file system, so the pid is not
    checked for liveness); returns the removed paths."""
    removed = []
    for p in folder.iterdir():
        m = TMP_PATTERN.match(p.name)
        if m and names(m.group("name")) and int(m.group("pid")) != os.getpid():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (:func:`dpa3.atomic_file.atomic_open`)."""
    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def save_checkpoint(
    ckpt: dict[str, Any],
    prefix: str | os.PathLike,
    max_keep: int,
    pointer: str | os.PathLike | None = None,
) -> Path:
    """Write ``<prefix>-<step>.pt``, update ``<prefix>.pt`` and the pointer file, prune old
    ones (DeePMD-kit's ``max_ckpt_keep`` rule, see the module docstring).

    ``pointer``: the ``checkpoint`` file to update (default: ``checkpoint`` next to the
    checkpoints; training passes ``checkpoint`` in the working folder, as ``dp`` does).  It
    holds the new file's name if it lies next to it, else its path relative to the pointer's
    folder (absolute if ``prefix`` is).
    """
    pre = Path(prefix)
    pre.parent.mkdir(parents=True, exist_ok=True)
    ptr = pre.parent / "checkpoint" if pointer is None else Path(pointer)
    step = int(ckpt["step"])
    path = pre.with_name(f"{pre.name}-{step}.pt")
    pattern = re.compile(re.escape(pre.name) + r"-(\d+)\.pt$")
    ours = {pre.name + ".pt", "checkpoint"}
    stale = remove_stale_temporaries(
        pre.parent, lambda n: n in ours or pattern.match(n) is not None
    )
    apart = ptr.parent.resolve() != pre.parent.resolve()
    if apart:
        stale += remove_stale_temporaries(ptr.parent, lambda n: n == ptr.name)
    for p in stale:
        log.info("removed %s, left by a save that was killed", p)
    atomic_torch_save(ckpt, path)
    symlink(path.name, pre.with_name(f"{pre.name}.pt"))
    if not apart:
        name = path.name
    else:
        name = str(path) if path.is_absolute() else os.path.relpath(path, ptr.parent)
    write_text(ptr, name)  # no newline, as dp writes it
    fsync_dir(pre.parent)
    olds = []
    for p in pre.parent.iterdir() if max_keep > 0 else ():
        m = pattern.match(p.name)
        if m is None or p.is_symlink() or p == path:
            continue
        if int(m.group(1)) > step:  # left by a longer earlier run in this folder
            p.unlink(missing_ok=True)
        else:
            olds.append((int(m.group(1)), p))
    olds.sort()
    for _, p in olds[: max(0, len(olds) + 1 - max_keep)]:
        p.unlink(missing_ok=True)
    log.info("saved checkpoint %s", path)
    return path


def check_output_paths(training: TrainingConfig) -> None:
    """Before training: the folders of ``disp_file``, ``save_ckpt`` and ``stat_file`` exist
    (those of ``save_ckpt`` and ``stat_file`` are created, as saving would) and take files,
    and no output name is a folder; so a bad path fails now, not at the first save.

    Raises :class:`dpa3.errors.ConfigError` naming the key.
    """
    outputs = [("disp_file", Path(training.disp_file), False)]
    outputs.append(("save_ckpt", Path(training.save_ckpt + ".pt"), True))
    if training.stat_file is not None and training.stat_file_mode == "update":
        outputs.append(("stat_file", Path(training.stat_file), True))
    for key, path, create in outputs:
        where = f"'training.{key}' = {getattr(training, key)!r}"
        folder = path.parent
        if key == "disp_file" and path.is_dir():
            raise ConfigError(f"{where}: '{path}' is a folder, not a file")
        try:
            if create:
                folder.mkdir(parents=True, exist_ok=True)
            elif not folder.is_dir():
                raise ConfigError(f"{where}: folder '{folder}' does not exist")
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise ConfigError(f"{where}: cannot write in folder '{folder}': {err}") from None
    if Path(POINTER).is_dir():
        raise ConfigError(f"'{POINTER}' (the checkpoint pointer file) is a folder, not a file")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Accept a checkpoint file, the ``checkpoint`` pointer file, or a folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint"
    if p.name == "checkpoint" and p.is_file():
        name = p.read_text().strip()
        p = p.parent / name
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    return p


def archive_problem(p: Path) -> str | None:
    """What keeps ``p`` from being a ``torch.save`` or TorchScript file (both are zip archives
    since torch 1.6; torch itself would report an unpickling byte or a miniz error):
    ``"empty"``, ``"truncated"`` (a zip archive's first entry but no end), ``"not a zip"``, or
    ``None``."""
    if p.stat().st_size == 0:
        return "empty"
    if zipfile.is_zipfile(p):
        return None
    with p.open("rb") as fh:
        return "truncated" if fh.read(4) == b"PK\x03\x04" else "not a zip"


def _not_torch_file(p: Path) -> str | None:
    """Why ``p`` cannot be a checkpoint (:func:`archive_problem`, in words), or ``None``."""
    problem = archive_problem(p)
    if problem == "empty":
        return "the file is empty"
    if problem is not None:
        size = p.stat().st_size
        return f"not the zip archive torch writes: a truncated file ({size} bytes) or another kind"
    return None


def first_line(err: BaseException) -> str:
    """The first line of a foreign (torch) error, without miniz's advice to file a bug, at
    most 200 characters (torch's own messages run to many lines of advice)."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line.split(" This is an internal miniz error")[0][:200]


def is_deepmd_checkpoint(obj: Any) -> bool:
    """Whether a ``torch.load``-ed object is a DeePMD-kit training checkpoint (its model's
    parameters and config under ``model`` / ``_extra_state``)."""
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("model"), dict)
        and "_extra_state" in obj["model"]
    )


def convert_command(path: Path) -> str:
    """The ``dpa3 convert-deepmd`` command for a DeePMD-kit model file (output: the file's
    name without ``.pt``/``.pth`` and ``.ckpt``, then ``-dpa3.ckpt.pt``, in the working
    folder)."""
    base = path.name
    for suffix in (".pt", ".pth", ".ckpt"):
        base = base.removesuffix(suffix)
    out = f"{base or 'model'}-dpa3.ckpt.pt"
    return f"dpa3 convert-deepmd {shlex.quote(str(path))} {shlex.quote(out)}"


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load and check a dpa3 checkpoint (``weights_only``: it holds no pickled objects)."""
    p = resolve_checkpoint(path)
    why = _not_torch_file(p)
    if why is not None:
        raise CheckpointError(f"cannot read checkpoint '{p}': {why}")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as err:  # name the file in the message (torch's first line only)
        raise CheckpointError(
            f"cannot read checkpoint '{p}': {first_line(err)} (a dpa3 checkpoint holds "
            "tensors and plain values only; DeePMD-kit checkpoints need 'dpa3 convert-deepmd' "
            "first)"
        ) from err
    if is_deepmd_checkpoint(ckpt):
        raise CheckpointError(
            f"'{p}' is a DeePMD-kit checkpoint; convert it first: {convert_command(p)}"
        )
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"'{p}' is not a dpa3 checkpoint (DeePMD-kit checkpoints need "
            "'dpa3 convert-deepmd' first)"
        )
    if ckpt.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"'{p}' was written by a newer dpa3 (format {ckpt['version']})")
    return ckpt


def frozen_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The weights of a frozen dpa3 model (``dpa3 freeze``) as a step-0 checkpoint dict.

    A frozen model is a TorchScript module: its ``state_dict`` holds every parameter and
    buffer (energy bias included) under the names of the eager model, and ``get_metadata()``
    its typed model config.  Used by ``--init-frz-model`` and ``dpa3 change-bias``.
    """
    import json

    from .. import _ops
    from ..model.model import NON_PERSISTENT_BUFFERS

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"frozen model '{path}' does not exist")
    why = _not_torch_file(p)
    if why is not None:
        raise CheckpointError(f"cannot read the weights of '{p}': not a frozen dpa3 model ({why})")
    _ops.load_ops()  # the scripted model calls the op library
    try:
        module = torch.jit.load(str(p), map_location="cpu")
        config = json.loads(module.get_metadata()["config"])
    except Exception as err:  # name the file in the message
        raise CheckpointError(
            f"cannot read the weights of '{p}': not a frozen dpa3 model ({first_line(err)}); "
            f"a DeePMD-kit model needs 'dpa3 convert-deepmd {p}' first"
        ) from err
    # a scripted module's state_dict also holds the buffers the eager model does not save
    state = {
        k: v.detach().clone()
        for k, v in module.state_dict().items()
        if k.rsplit(".", 1)[-1] not in NON_PERSISTENT_BUFFERS
    }
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "dpa3_version": __version__,
        "torch_version": str(torch.__version__),
        "step": 0,
        "model_config": config,
        "input": None,
        "model": state,
        "optimizer": None,
        "rng": None,
        "sampler": None,
        "frozen_from": str(p),
    }


__all__ = [
    "POINTER",
    "CheckpointError",
    "archive_problem",
    "atomic_torch_save",
    "check_output_paths",
    "first_line",
    "frozen_checkpoint",
    "load_checkpoint",
    "make_checkpoint",
    "remove_stale_temporaries",
    "resolve_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]
