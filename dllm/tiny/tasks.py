"""The embedded model's synthetic tasks: seeded generators, a fixed train/test split, and scorers.

Three tasks where the decoding strategy visibly matters because answer tokens depend on each other:

* ``arith``: a short chain of variable assignments with + - x on small numbers; the answer is a worked
  solution (one line per derived variable) and a final ``#### <number>`` line, GSM8K's convention.
* ``json``: a sentence stating 2-5 facts about a person or an object; the answer is a JSON object with
  those fields, in the order the sentence mentions them (strings and integers).
* ``sort``: a list of numbers; the answer is the sorted list.

Prompts are chat-free: ``"<Instruction>: <input>\\n"``, the answer follows directly and ends in EOS.

Train and test sets are disjoint by construction: every problem is hashed (task + prompt) and a fixed
slice of the hash range belongs to the test split; the training stream rejects problems in that slice.
Everything is driven by :class:`random.Random`, so a seed gives the same problems on every platform.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

TASKS = ("arith", "json", "sort")
TEST_PERCENT = 5  # share of the problem space (by hash) reserved for the test split
TEST_SIZE = 300  # examples per shipped test file
DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Example:
    """One problem: the prompt fed to the model, the reference answer (without EOS), and task metadata."""

    task: str
    prompt: str
    target: str
    meta: dict = field(default_factory=dict, compare=False)


# --------------------------------------------------------------------------------------------------
# arith
# --------------------------------------------------------------------------------------------------
_LETTERS = "abcdefghkmnpqrstuvwxyz"
MAX_VALUE = 50  # every given and intermediate value stays in 0..50


def _arith(rng: random.Random) -> Example:
    """A chain: one given value, then 1-2 variables each derived from the previous one and a constant 1-9.

    Sized to the training budget (see README): values stay in 0..50, products only by 2 or 3.
    """
    names = rng.sample(_LETTERS, 1 + rng.choice((1, 2)))
    value = rng.randint(1, 20)
    statements, lines = [f"{names[0]}={value}"], []
    for previous, name in zip(names, names[1:]):
        while True:
            op = rng.choice("+-*")
            k = rng.randint(2, 3) if op == "*" else rng.randint(1, 9)
            result = {"+": value + k, "-": value - k, "*": value * k}[op]
            if 0 <= result <= MAX_VALUE:
                break
        statements.append(f"{name}={previous}{op}{k}")
        lines.append(f"{name}={value}{op}{k}={result}")
        value = result
    prompt = f"Solve: {', '.join(statements)}. What is {names[-1]}?\n"
    target = "\n".join(lines + [f"#### {value}"])
    return Example("arith", prompt, target, {"answer": value})


def arith_answer(text: str) -> int | None:
    """The number after the last ``####`` (None if there is none)."""
    found = re.findall(r"####\s*(-?\d+)", text)
    return int(found[-1]) if found else None


# --------------------------------------------------------------------------------------------------
# json
# --------------------------------------------------------------------------------------------------
NAMES = ("Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivan", "Jade", "Kai", "Lena", "Max",
         "Nora", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wes", "Yara", "Zoe", "Leo",
         "Mia", "Noah", "Ruth", "Tom")
CITIES = ("Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Delhi", "Berlin", "Madrid", "Dublin",
          "Vienna", "Prague", "Quito", "Seoul", "Sydney", "Boston", "Austin", "Milan", "Lagos", "Riga")
JOBS = ("baker", "nurse", "pilot", "chef", "farmer", "teacher", "doctor", "painter", "lawyer", "driver",
        "singer", "writer", "dentist", "plumber", "tailor", "miner")
PETS = ("cat", "dog", "parrot", "rabbit", "horse", "goat", "turtle", "hamster", "snake", "duck")
ITEMS = ("lamp", "chair", "table", "clock", "vase", "bowl", "box", "mirror", "bench", "kettle", "shelf",
         "basket", "bottle", "candle", "rug", "desk")
COLORS = ("red", "blue", "green", "black", "white", "yellow", "gray", "brown", "pink", "orange")
MATERIALS = ("wood", "steel", "glass", "stone", "clay", "plastic", "paper", "copper", "silk", "wool")

# field -> (value sampler, phrasings); the subject field (name / item) always comes first
_PERSON = {
    "age": (lambda r: r.randint(18, 90), ("is {} years old", "is aged {}")),
    "city": (lambda r: r.choice(CITIES), ("lives in {}", "is from {}")),
    "job": (lambda r: r.choice(JOBS), ("works as a {}", "is a {} by trade")),
    "pet": (lambda r: r.choice(PETS), ("has a {}", "owns a {}")),
}
_OBJECT = {
    "color": (lambda r: r.choice(COLORS), ("is {}", "is painted {}")),
    "price": (lambda r: r.randint(2, 99), ("costs {} dollars", "sells for {} dollars")),
    "weight": (lambda r: r.randint(1, 40), ("weighs {} kg", "has a weight of {} kg")),
    "material": (lambda r: r.choice(MATERIALS), ("is made of {}", "is built from {}")),
}


def _json(rng: random.Random) -> Example:
    """A subject plus 1-4 facts in random order and phrasing; the JSON lists them in sentence order."""
    if rng.random() < 0.5:
        subject_key, subject, schema = "name", rng.choice(NAMES), _PERSON
        opening = subject
    else:
        subject_key, subject, schema = "item", rng.choice(ITEMS), _OBJECT
        opening = f"The {subject}"
    keys = rng.sample(list(schema), rng.randint(1, 4))
    record: dict[str, str | int] = {subject_key: subject}
    clauses = []
    for key in keys:
        sampler, phrasings = schema[key]
        value = sampler(rng)
        record[key] = value
        clauses.append(rng.choice(phrasings).format(value))
    body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    prompt = f"To JSON: {opening} {body}.\n"
    return Example("json", prompt, json.dumps(record), {"record": record})


# --------------------------------------------------------------------------------------------------
# sort
# --------------------------------------------------------------------------------------------------
def _sort(rng: random.Random) -> Example:
    """3-6 distinct numbers in 0..49 -> ascending order (sized to the training budget, see README)."""
    numbers = rng.sample(range(50), rng.randint(3, 6))
    prompt = f"Sort: {' '.join(map(str, numbers))}\n"
    return Example("sort", prompt, " ".join(map(str, sorted(numbers))), {"numbers": numbers})


_GENERATORS = {"arith": _arith, "json": _json, "sort": _sort}


# --------------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------------
def in_test_split(example: Example) -> bool:
    """True if the problem belongs to the held-out slice of the hash range (stable across runs/platforms)."""
    digest = hashlib.sha256(f"{example.task}\x00{example.prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 < TEST_PERCENT


def _generator(task: str, split: str = "train", progress: float = 1.0, options: dict | None = None):
    """The generator of ``task``: the first suite's here, ``tiny-cot``'s in :mod:`.cot_tasks` (whose test sets
    may use a narrower difficulty range than training, ``cot_tasks.TEST_DIFFICULTY``, and whose training
    ranges a length curriculum narrows while ``progress`` < 1; the first suite has no curriculum)."""
    if task in _GENERATORS:
        return _GENERATORS[task]
    from . import cot_tasks

    if task in cot_tasks.GENERATORS:
        return lambda rng: cot_tasks.generate(task, rng, split, progress, options)
    raise ValueError(f"unknown task {task!r} (known: {', '.join(all_tasks())})")


def all_tasks() -> tuple[str, ...]:
    """Every task name: the ``tiny`` suite, then the ``tiny-cot`` suite."""
    from .cot_tasks import COT_TASKS

    return TASKS + COT_TASKS


def sample(task: str, rng: random.Random, split: str = "train", progress: float = 1.0,
           options: dict | None = None) -> Example:
    """Draw one problem of ``task`` from ``split`` ("train" or "test"); ``progress`` < 1: a curriculum's
    narrower training range (see :func:`.cot_tasks.curriculum_ranges`); ``options``: task -> generator
    keywords overriding the training ranges (a recipe's ``task_options``)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    generate = _generator(task, split, progress, options)
    while True:
        example = generate(rng)
        if in_test_split(example) == (split == "test"):
            return example


def train_examples(seed: int, count: int, tasks=TASKS, options: dict | None = None) -> list[Example]:
    """``count`` training problems cycling through ``tasks``; a function of ``seed`` (and ``options``) only."""
    rng = random.Random(seed)
    return [sample(tasks[i % len(tasks)], rng, "train", options=options) for i in range(count)]


def test_set(task: str, size: int = TEST_SIZE, seed: int = 1234) -> list[Example]:
    """``size`` distinct held-out problems of ``task`` (what ``data/<task>_test.jsonl`` holds)."""
    rng = random.Random(f"{task}-test-{seed}")
    seen, examples = set(), []
    while len(examples) < size:
        example = sample(task, rng, "test")
        if example.prompt not in seen:
            seen.add(example.prompt)
            examples.append(example)
    return examples


# --------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------
def score(task: str, target: str, completion: str) -> dict[str, float]:
    """Per-example metrics of a completion against the reference answer (1.0 = right).

    arith: ``exact`` = the ``####`` number equals the reference one. json: ``parseable`` = the completion is a
    JSON object, ``exact`` = it has exactly the reference fields and values (order ignored). sort: ``exact``
    = the same list of numbers (whitespace ignored).
    """
    if task.startswith("cot_"):
        from . import cot_tasks

        return cot_tasks.score(task, reference_answer(task, target), completion)
    completion = completion.strip()
    if task == "arith":
        return {"exact": float(arith_answer(completion) == arith_answer(target))}
    if task == "json":
        try:
            parsed = json.loads(completion)
        except ValueError:
            return {"parseable": 0.0, "exact": 0.0}
        ok = isinstance(parsed, dict)
        return {"parseable": float(ok), "exact": float(ok and parsed == json.loads(target))}
    if task == "sort":
        return {"exact": float(completion.split() == target.split())}
    raise ValueError(f"unknown task {task!r} (known: {', '.join(TASKS)})")


def reference_answer(task: str, target: str):
    """What the scorer compares, recovered from a reference answer text (``tiny-cot`` tasks)."""
    if task == "cot_arith":
        return arith_answer(target)
    if task == "cot_filter":
        return sorted(int(w) for w in target.split())
    if task == "cot_copy":
        return target
    if task == "cot_json":
        return json.loads(target)
    raise ValueError(f"no reference answer rule for task {task!r}")


# --------------------------------------------------------------------------------------------------
# multiple-choice distractors (for loglikelihood-style evaluation)
# --------------------------------------------------------------------------------------------------
def distractors(example: Example, count: int = 3, seed: int = 0) -> list[str]:
    """``count`` wrong answers that look like the right one (for multiple-choice / loglikelihood tasks).

    arith: the last line's result and the ``####`` number shifted by a small offset; json: one field's
    value replaced by another plausible value; sort: two numbers swapped or one number changed.
    """
    rng = random.Random(f"{seed}\x00{example.task}\x00{example.prompt}")
    wrong: list[str] = []
    for _ in range(200):
        if len(wrong) == count:
            break
        candidate = _corrupt(example, rng)
        if candidate is not None and candidate != example.target and candidate not in wrong:
            wrong.append(candidate)
    return wrong


def _corrupt(example: Example, rng: random.Random) -> str | None:
    if example.task == "arith":
        answer = example.meta["answer"]
        wrong = answer + rng.choice((-10, -2, -1, 1, 2, 10))
        if wrong < 0:
            return None
        lines = example.target.split("\n")
        lines[-2] = re.sub(r"=\d+$", f"={wrong}", lines[-2])
        lines[-1] = f"#### {wrong}"
        return "\n".join(lines)
    if example.task == "json":
        record = dict(example.meta["record"])
        key = rng.choice(list(record))
        pools = {"name": NAMES, "item": ITEMS, "city": CITIES, "job": JOBS, "pet": PETS, "color": COLORS,
                 "material": MATERIALS}
        value = record[key]
        record[key] = rng.choice(pools[key]) if key in pools else max(1, value + rng.choice((-3, -1, 1, 3)))
        return json.dumps(record)
    if example.task == "sort":
        numbers = sorted(example.meta["numbers"])
        i, j = sorted(rng.sample(range(len(numbers)), 2))
        if rng.random() < 0.5 and numbers[i] != numbers[j]:
            numbers[i], numbers[j] = numbers[j], numbers[i]
        else:
            numbers[j] = min(49, max(0, numbers[j] + rng.choice((-1, 1, 10))))
        return " ".join(map(str, numbers))
    raise ValueError(f"unknown task {example.task!r}")


# --------------------------------------------------------------------------------------------------
# shipped test files
# --------------------------------------------------------------------------------------------------
def test_record(example: Example, index: int) -> dict:
    """One line of ``data/<task>_test.jsonl``: prompt, reference answer, what is scored, and 4 choices.

    ``target`` is the full reference answer (what generation should produce, EOS excluded); ``answer`` is
    what the scorer compares (arith: the number, json: the object, sort: the sorted numbers); ``choices`` +
    ``label`` are a multiple-choice version (the target among 3 distractors) for loglikelihood scoring.
    """
    if example.task.startswith("cot_"):  # generation only; cot_filter's reference is one of many valid orders
        target = example.meta.get("canonical", example.target)
        return {"id": f"{example.task}-{index:04d}", "task": example.task, "prompt": example.prompt,
                "target": target, "answer": example.meta["answer"]}
    answer = {"arith": lambda: example.meta["answer"], "json": lambda: example.meta["record"],
              "sort": lambda: sorted(example.meta["numbers"])}[example.task]()
    choices = [example.target] + distractors(example)
    random.Random(f"choices\x00{example.prompt}").shuffle(choices)
    return {"id": f"{example.task}-{index:04d}", "task": example.task, "prompt": example.prompt,
            "target": example.target, "answer": answer, "choices": choices, "label": choices.index(example.target)}


def export_test_sets(directory: Path = DATA_DIR, size: int = TEST_SIZE) -> list[Path]:
    """(Re)write ``<task>_test.jsonl`` for every task; the files are a function of the code alone."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for task in all_tasks():
        path = directory / f"{task}_test.jsonl"
        lines = [json.dumps(test_record(ex, i)) for i, ex in enumerate(test_set(task, size))]
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def load_test_set(task: str, directory: Path = DATA_DIR) -> list[Example]:
    """The shipped held-out problems of ``task`` (from ``data/<task>_test.jsonl``)."""
    path = directory / f"{task}_test.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m dllm.tiny.tasks` to write the test sets")
    examples = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        examples.append(Example(record["task"], record["prompt"], record["target"], {"answer": record["answer"]}))
    return examples


if __name__ == "__main__":
    for written in export_test_sets():
        print(f"wrote {written}")
