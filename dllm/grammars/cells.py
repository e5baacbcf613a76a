"""What one masked cell can hold: the vocabulary as a small automaton over the grammar's byte classes.

Why: a masked cell becomes exactly one token, so a gap of n cells between committed text holds exactly n
tokens (at most n before an end of output, where the rest may be EOS). Treating a gap as "any byte string"
lets a decoder commit into dead ends such as ``"city": "Rome`` + one mask + ``color"`` (the cell would need
``", "``, two tokens). The kernels therefore unroll short gaps cell by cell through this automaton
(``kernels.build_nfa``); longer gaps stay "any byte string" (a sound over-approximation).

Construction (exact, not an approximation):

* **Byte classes.** Bytes on which every terminal DFA of the grammar steps identically (equal columns of
  the flattened step table) can never be told apart by the lexer, so the vocabulary is read as strings of
  class ids. For JSON that is 30 classes.
* **Minimal acyclic DFA** of the set of class strings of the allowed tokens (every id with text that is
  not special/excluded, not EOS, not the mask): a trie, then merging states with the same right language,
  children first. States are renumbered so that the root is 0 and every transition goes to a higher id
  (a topological order the kernels rely on). On the embedded tokenizers this is about 170 states.

The token an unrolled cell stands for in a witness is recovered from its class string (``tokens_by_class``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CellAutomaton", "cell_automaton"]


@dataclass(frozen=True)
class CellAutomaton:
    """The arrays the kernels read, plus what the witness needs to turn class strings back into tokens."""

    step: np.ndarray        # int32 [n_states * n_classes]: next state or -1; root = 0; targets > source
    final: np.ndarray       # uint8 [n_states]: a token may end here
    live: np.ndarray        # uint8 [n_states]: some transition leaves this state
    byte_class: np.ndarray  # int32 [256]
    class_byte: np.ndarray  # int32 [n_classes]: one representative byte per class
    tokens_by_class: dict   # class string (tuple) -> id of one token with that class string (the lowest)

    @property
    def n_states(self) -> int:
        return int(self.final.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.class_byte.shape[0])


def byte_classes(g_step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Partition of the 256 bytes by their column in the flattened terminal step table."""
    table = np.asarray(g_step).reshape(-1, 256)
    index: dict[bytes, int] = {}
    byte_class = np.zeros(256, dtype=np.int32)
    reps: list[int] = []
    for b in range(256):
        key = table[:, b].tobytes()
        c = index.get(key)
        if c is None:
            c = index[key] = len(reps)
            reps.append(b)
        byte_class[b] = c
    return byte_class, np.array(reps, dtype=np.int32)


def cell_automaton(g_step: np.ndarray, table: list, allowed: np.ndarray) -> CellAutomaton:
    """Minimal DFA over byte classes of the texts of the tokens with ``allowed[id]`` (non-empty texts)."""
    byte_class, class_byte = byte_classes(g_step)
    strings: dict[tuple, int] = {}
    for i, data in enumerate(table):
        if data and allowed[i]:
            strings.setdefault(tuple(int(byte_class[b]) for b in data), i)
    # trie
    children: list[dict[int, int]] = [{}]
    ends: list[bool] = [False]
    depth: list[int] = [0]
    for s in strings:
        node = 0
        for c in s:
            nxt = children[node].get(c)
            if nxt is None:
                nxt = len(children)
                children[node][c] = nxt
                children.append({})
                ends.append(False)
                depth.append(depth[node] + 1)
            node = nxt
        ends[node] = True
    # merge equal right languages, deepest first (children are canonical before their parents)
    canon: dict[tuple, int] = {}
    rep = [0] * len(children)
    for node in sorted(range(len(children)), key=lambda v: -depth[v]):
        key = (ends[node], tuple(sorted((c, rep[v]) for c, v in children[node].items())))
        rep[node] = canon.setdefault(key, len(canon))
    n = len(canon)
    # canonical ids were given children first: reversing them makes the root 0 and every edge go forward
    n_classes = int(class_byte.shape[0])
    step = np.full(n * n_classes, -1, dtype=np.int32)
    final = np.zeros(n, dtype=np.uint8)
    live = np.zeros(n, dtype=np.uint8)
    for (end, edges), cid in canon.items():
        src = n - 1 - cid
        final[src] = end
        live[src] = bool(edges)
        for c, v in edges:
            step[src * n_classes + c] = n - 1 - v
    return CellAutomaton(step, final, live, byte_class, class_byte, strings)
