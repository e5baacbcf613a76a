"""Scoring through lm-eval: the ``dllm`` model, the embedded task suite, and ``dllm eval`` sweeps.

Importing this package is cheap: it registers the model name ``dllm`` with lm-eval lazily (the class in
:mod:`dllm.eval.lm` loads on first use). Use :func:`task_manager` so the embedded tasks (``dllm_arith``,
``dllm_json``, ``dllm_sort`` and their ``*_mc`` multiple-choice versions) are found::

    import lm_eval, dllm.eval
    lm_eval.simple_evaluate(model="dllm", model_args="pretrained=tiny,sampler=threshold",
                            tasks=["dllm_arith"], task_manager=dllm.eval.task_manager())
"""

from __future__ import annotations

import logging
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


try:
    register()
except ImportError:  # pragma: no cover - lm-eval missing: dllm still decodes, only evaluation is unavailable
    pass
