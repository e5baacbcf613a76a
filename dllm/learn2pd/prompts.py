"""Where training prompts come from: an embedded task set's *training* split, or a user file.

Never the test sets: embedded prompts are drawn with ``tasks.sample(task, rng, "train")``, which rejects the
held-out slice of the problem space. A task set without a training split (an lm-eval task, say) takes its
prompts from a file: one prompt per line, or JSON lines (``{"prompt": ...}`` objects or JSON strings).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path


def task_prompts(tasks: list[str], limit: int, seed: int) -> list[str]:
    """Up to ``limit`` distinct training prompts per task, drawn from ``seed`` (duplicates are skipped)."""
    from ..tiny import tasks as embedded

    known = embedded.all_tasks()
    for task in tasks:
        if task not in known:
            raise ValueError(f"task '{task}' has no training split in dllm (embedded tasks: {', '.join(known)}): "
                             f"pass its training prompts with --prompts FILE")
    prompts = []
    for task in tasks:
        rng = random.Random(f"learn2pd-{task}-{seed}")
        seen: set[str] = set()
        for _ in range(20 * limit):
            if len(seen) >= limit:
                break
            prompt = embedded.sample(task, rng, "train").prompt
            if prompt not in seen:
                seen.add(prompt)
                prompts.append(prompt)
    return prompts


def file_prompts(path, suffix: str = "", limit: int | None = None) -> list[str]:
    """Prompts of a text file (one per line) or a ``.jsonl`` file; ``suffix`` is appended to each prompt
    that does not end with it (the embedded models' prompts end in a newline, which a line cannot hold)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read prompts file {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    jsonl = path.suffix == ".jsonl"
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if jsonl:
            try:
                item = json.loads(line)
            except ValueError:
                raise ValueError(f"{path}:{number} is not a JSON line") from None
            item = item.get("prompt") if isinstance(item, dict) else item
            if not isinstance(item, str) or not item:
                raise ValueError(f"{path}:{number}: expected a JSON string or an object with a 'prompt' string")
            line = item
        prompts.append(line if not suffix or line.endswith(suffix) else line + suffix)
    return prompts[:limit] if limit else prompts


def file_digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
