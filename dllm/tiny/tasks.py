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

TASKS = ("arith", "json", "sort")
TEST_PERCENT = 5  # share of the problem space (by hash) reserved for the test split
TEST_SIZE = 300  # examples per shipped test file


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
MAX_VALUE = 99  # every given and intermediate value stays in 0..99


def _arith(rng: random.Random) -> Example:
    """1-2 given values, then 1-3 derived ones (``x = y op k`` or ``x = y op z``); asks for the last one."""
    n_given = rng.choice((1, 2))
    n_derived = rng.choice((1, 2, 3))
    names = rng.sample(_LETTERS, n_given + n_derived)
    values: dict[str, int] = {}
    statements, lines = [], []
    for name in names[:n_given]:
        values[name] = rng.randint(1, 20)
        statements.append(f"{name}={values[name]}")
    for name in names[n_given:]:
        while True:
            left = rng.choice(list(values))
            use_var = len(values) > 1 and rng.random() < 0.4
            right = rng.choice([v for v in values if v != left]) if use_var else None
            b = values[right] if right else rng.randint(1, 9)
            a = values[left]
            op = rng.choice("+-*")
            result = {"+": a + b, "-": a - b, "*": a * b}[op]
            if op == "*" and (a > 12 or b > 9 or b < 2):
                continue
            if 0 <= result <= MAX_VALUE:
                break
        values[name] = result
        statements.append(f"{name}={left}{op}{right or b}")
        lines.append(f"{name}={a}{op}{b}={result}")
    question = names[-1]
    prompt = f"Solve: {', '.join(statements)}. What is {question}?\n"
    target = "\n".join(lines + [f"#### {values[question]}"])
    return Example("arith", prompt, target, {"answer": values[question]})


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
    """3-8 numbers in 0..99 (repeats allowed) -> ascending order."""
    numbers = [rng.randint(0, 99) for _ in range(rng.randint(3, 8))]
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


def sample(task: str, rng: random.Random, split: str = "train") -> Example:
    """Draw one problem of ``task`` from ``split`` ("train" or "test")."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    generate = _GENERATORS[task]
    while True:
        example = generate(rng)
        if in_test_split(example) == (split == "test"):
            return example


def train_examples(seed: int, count: int, tasks=TASKS) -> list[Example]:
    """``count`` training problems cycling through ``tasks``; a function of ``seed`` only."""
    rng = random.Random(seed)
    return [sample(tasks[i % len(tasks)], rng, "train") for i in range(count)]


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
            numbers[j] = min(99, max(0, numbers[j] + rng.choice((-1, 1, 10))))
        return " ".join(map(str, numbers))
    raise ValueError(f"unknown task {example.task!r}")
