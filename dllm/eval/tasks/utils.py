"""Helpers the task YAMLs call with ``!function``: the shipped test data and per-task metrics.

The data is read from the package (``dllm/tiny/data``), never from a hub, so evaluation works offline and
wherever dllm is installed; scoring reuses :func:`dllm.tiny.tasks.score`.
"""

from __future__ import annotations

import json


def _dataset(task: str):
    import datasets

    from dllm.tiny.tasks import DATA_DIR

    path = DATA_DIR / f"{task}_test.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from this install: reinstall dllm")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:  # JSON objects of varying keys do not fit one Arrow column: keep the text
        row["answer"] = json.dumps(row["answer"])
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_arith(**_metadata):
    return _dataset("arith")


def load_json(**_metadata):
    return _dataset("json")


def load_sort(**_metadata):
    return _dataset("sort")


def _score(task: str, doc: dict, results: list[str]) -> dict:
    from dllm.tiny.tasks import score

    return score(task, doc["target"], results[0])


def process_arith(doc: dict, results: list[str]) -> dict:
    """Exact match of the number after ``####``."""
    return {"exact_match": _score("arith", doc, results)["exact"]}


def process_sort(doc: dict, results: list[str]) -> dict:
    """Exact match of the sorted list (whitespace-insensitive)."""
    return {"exact_match": _score("sort", doc, results)["exact"]}


def process_json(doc: dict, results: list[str]) -> dict:
    """Valid-JSON rate, exact match of the object, and the share of reference fields reproduced exactly."""
    scores = _score("json", doc, results)
    reference = json.loads(doc["target"])
    try:
        parsed = json.loads(results[0].strip())
    except ValueError:
        parsed = None
    fields = 0.0
    if isinstance(parsed, dict):
        fields = sum(key in parsed and parsed[key] == value for key, value in reference.items()) / len(reference)
    return {"valid_json": scores["parseable"], "field_accuracy": fields, "exact_match": scores["exact"]}


# ----------------------------------------------------------------------------------------------------
# tiny-cot suite (dllm_cot_*): scored by dllm.tiny.tasks.score, which accepts every valid answer
# ----------------------------------------------------------------------------------------------------
def load_cot_arith(**_metadata):
    return _dataset("cot_arith")


def load_cot_filter(**_metadata):
    return _dataset("cot_filter")


def load_cot_copy(**_metadata):
    return _dataset("cot_copy")


def load_cot_json(**_metadata):
    return _dataset("cot_json")


def process_cot_arith(doc: dict, results: list[str]) -> dict:
    """Exact match of the number after ``####``."""
    return {"exact_match": _score("cot_arith", doc, results)["exact"]}


def process_cot_filter(doc: dict, results: list[str]) -> dict:
    """The selected numbers, each once, in any order."""
    return {"exact_match": _score("cot_filter", doc, results)["exact"]}


def process_cot_copy(doc: dict, results: list[str]) -> dict:
    """Exact match of the copied / reversed / shifted sequence."""
    return {"exact_match": _score("cot_copy", doc, results)["exact"]}


def process_cot_json(doc: dict, results: list[str]) -> dict:
    """Valid-JSON rate, share of top-level reference fields reproduced exactly, exact match of the object."""
    scores = _score("cot_json", doc, results)
    return {"valid_json": scores["parseable"], "field_accuracy": scores["fields"], "exact_match": scores["exact"]}
