"""Scoring through lm-eval: the ``dllm`` model, the embedded task suite, and ``dllm eval`` sweeps.

Importing this package is cheap: it registers the model name ``dllm`` with lm-eval lazily (the class in
:mod:`dllm.eval.lm` loads on first use). Use :func:`task_manager` so the embedded tasks (``dllm_arith``,
``dllm_json``, ``dllm_sort`` and their ``*_mc`` multiple-choice versions) are found::

    import lm_eval, dllm.eval
    lm_eval.simple_evaluate(model="dllm", model_args="pretrained=tiny,sampler=threshold",
                            tasks=["dllm_arith"], task_manager=dllm.eval.task_manager())
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import subprocess
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
MODEL_NAME = "dllm"


def register() -> None:
    """Make ``--model dllm`` known to lm-eval (idempotent; lm-eval's own models stay available)."""
    import lm_eval.models  # noqa: F401  (fills lm-eval's lazy model table first)
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target="dllm.eval.lm:DiffusionLM")


def task_manager(include_path=None, **kwargs):
    """An lm-eval ``TaskManager`` that knows the embedded tasks (plus ``include_path`` folders)."""
    from lm_eval.tasks import TaskManager

    extra = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
    quiet_task_loading()
    return TaskManager(include_path=[str(TASKS_DIR)] + [str(p) for p in extra], **kwargs)


class _OwnDatasetNotice(logging.Filter):
    """lm-eval warns about metadata kwargs whenever a task builds its dataset in Python; our tasks read
    the shipped files and take no kwargs, so that notice is noise for them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("dllm_") and "Custom kwargs" in message)


def quiet_task_loading() -> None:
    logger = logging.getLogger("lm_eval.api.task")
    if not any(isinstance(f, _OwnDatasetNotice) for f in logger.filters):
        logger.addFilter(_OwnDatasetNotice())


def check_num_fewshot(manager, tasks: list[str], num_fewshot: int | None, flag: str = "--num-fewshot") -> None:
    """Refuse ``num_fewshot > 0`` for tasks that are zero-shot by design (their config fixes
    ``num_fewshot: 0``, which lm-eval honours over the flag — the results would say 0-shot)."""
    if not num_fewshot:
        return
    if num_fewshot < 0:
        raise ValueError(f"{flag} {num_fewshot} must be >= 0")
    fixed = [t for t in _expand(manager, tasks) if _fixed_zero_shot(manager, t)]
    if fixed:
        raise ValueError(f"{flag} {num_fewshot}: {', '.join(fixed)} {'is' if len(fixed) == 1 else 'are'} zero-shot "
                         f"by design (the embedded models were trained without examples and have a 128-token context): "
                         f"drop --num-fewshot for these tasks")


def _expand(manager, names, depth: int = 0) -> list[str]:
    out = []
    for name in names:
        entry = manager.task_index.get(name)
        if entry is None or depth > 8:
            continue
        if entry.cfg is not None and entry.kind.name == "TASK":
            out.append(name)
        elif entry.tags:
            out += _expand(manager, sorted(entry.tags), depth + 1)
        elif entry.cfg and isinstance(entry.cfg.get("task"), list):
            out += _expand(manager, [t for t in entry.cfg["task"] if isinstance(t, str)], depth + 1)
    return list(dict.fromkeys(out))


def _fixed_zero_shot(manager, task: str) -> bool:
    cfg = manager.task_index[task].cfg or {}
    return cfg.get("num_fewshot") == 0


@contextlib.contextmanager
def quiet_lm_eval(progress: bool = True):
    """Around an lm-eval run: the git hash lm-eval records is looked up without git's "fatal: not a git
    repository" on stderr, and with ``progress=False`` lm-eval's own progress bars stay off too."""
    import lm_eval.api.model
    import lm_eval.api.task
    import lm_eval.evaluator

    patches = [(lm_eval.evaluator, "get_git_commit_hash", _git_commit_hash)]
    if not progress:
        for module in (lm_eval.api.task, lm_eval.api.model):
            patches.append((module, "tqdm", functools.partial(module.tqdm, disable=True)))
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    try:
        for module, name, value in patches:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _git_commit_hash() -> str | None:
    """lm-eval's git lookup (``git describe --always``, else the .git folder of the working directory), quietly."""
    from lm_eval.loggers.utils import get_commit_from_path

    try:
        done = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, timeout=10)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return get_commit_from_path(os.getcwd())
    except OSError:  # the working directory itself is gone
        return None


try:
    register()
except ImportError:  # pragma: no cover - lm-eval missing: dllm still decodes, only evaluation is unavailable
    pass
