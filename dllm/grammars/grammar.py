"""Grammar front end: Lark EBNF text -> terminal byte automata + a binary normal form.

Why this shape
--------------
The feasibility search (``kernels.py``) works on two levels, like the reference method (Mündler et al.,
arXiv 2508.10111): a *lexer* level where every terminal is a regular language over **bytes**, and a
*grammar* level over terminal names. This module turns user-facing grammar text into exactly the arrays
the kernels need, once per grammar:

* ``lark`` parses the EBNF (``[]``, ``*``, ``+``, ``~``, ``?rule`` inlining, ``%import``, ``%ignore`` are
  all expanded by lark itself); syntax and definition errors become one-line ``ValueError``s that carry
  lark's line and column.
* Every terminal's regex goes through ``interegular`` to a DFA, and the DFA is tabulated over the 256
  byte values by reading each byte as a latin-1 character. ASCII patterns are therefore exact; negated
  classes (``[^"\\\\]``) admit every byte >= 0x80, i.e. any UTF-8 inside JSON strings (a deliberate, slight
  over-approximation: malformed UTF-8 is not rejected). Literal strings (``"é"``) are converted to their
  UTF-8 bytes exactly; a *regex* containing non-ASCII characters is refused with a ValueError because the
  latin-1 reading would silently mean something else.
* DFAs are trimmed to live states (reachable from the start and able to reach an accept state), so a
  lexeme in progress dies the moment it can no longer complete. A terminal that matches the empty string
  is refused (zero-width lexemes would make the canvas automaton cyclic).

Ignored terminals (``%ignore``)
-------------------------------
The spec (section 5.2) suggests silent epsilon edges. Choice made here: ignored terminals become
**ordinary terminals of the grammar** instead. The start rule becomes ``S' -> S | IGNS S`` and every
terminal occurrence ``t`` in a rule body becomes ``W_t -> t | t IGNS`` with ``IGNS -> I | I IGNS``
for each ignored terminal ``I``. This is exactly lark's semantics (ignored lexemes may appear before,
between and after the real ones), keeps the canvas automaton free of epsilon edges (no closure
elimination, no back-pointer bookkeeping for it) and makes witnesses trivial to reconstruct, at the price
of about one extra binary rule per terminal.

Normal form
-----------
Rules end up in the shapes ``A -> B C``, ``A -> B``, ``A -> t`` and ``A -> ε`` (unit and epsilon rules are
kept: linear size, unlike CNF). Terminals inside bodies of length >= 2 get a proxy nonterminal; long bodies
are binarized right-recursively and identical suffixes share one nonterminal. Non-productive and
unreachable nonterminals are dropped; a grammar whose start symbol is not productive has no valid string
and is refused with a one-line ValueError.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["Grammar", "TerminalDFA", "load_grammar", "BUILTIN_DIR"]

BUILTIN_DIR = Path(__file__).parent

# byte order in which witnesses pick "some byte": readable characters first, so completions look natural
_PREFERRED = (b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_ -.,:;!?'\"()[]{}<>/\\|@#$%^&*+=~`"
              + bytes(range(0x20)) + bytes(range(0x7F, 0x100)))
BYTE_ORDER = list(dict.fromkeys(_PREFERRED))  # every byte exactly once, preferred ones first


@lru_cache(maxsize=4096)
def _tabulate(regex: str) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """(byte table, accepting flags, closures) of one terminal regex. Cached by the regex: a server compiling one
    grammar per JSON Schema would otherwise rebuild the same terminals (strings, numbers, key literals) every
    time; measured on tiny-cot schema rows that was about 0.15 s of every request."""
    import interegular

    try:
        fsm = interegular.parse_pattern(regex).to_fsm()
    except Exception as exc:  # interegular raises assorted errors on unsupported syntax
        raise ValueError(f"regex {regex!r} is not supported ({type(exc).__name__}: {exc})") from None
    # tabulate over bytes read as latin-1 characters
    raw: dict[int, list[int]] = {}
    for s in fsm.states:
        row = [-1] * 256
        trans = fsm.map.get(s, {})
        for b in range(256):
            cls = fsm.alphabet[chr(b)]
            nxt = trans.get(cls)
            if nxt is not None:
                row[b] = nxt
        raw[s] = row
    finals = set(fsm.finals)
    # forward reachable from initial
    reach = {fsm.initial}
    todo = [fsm.initial]
    while todo:
        s = todo.pop()
        for t in raw[s]:
            if t >= 0 and t not in reach:
                reach.add(t)
                todo.append(t)
    # co-reachable (can reach a final state)
    live = {s for s in reach if s in finals}
    changed = True
    while changed:
        changed = False
        for s in reach:
            if s not in live and any(t in live for t in raw[s] if t >= 0):
                live.add(s)
                changed = True
    if fsm.initial not in live:
        raise ValueError(f"regex {regex!r} matches nothing")
    if fsm.initial in finals:
        raise ValueError(f"regex {regex!r} matches the empty string (zero-width terminals are not supported)")
    order = [fsm.initial] + sorted(s for s in live if s != fsm.initial)
    index = {s: i for i, s in enumerate(order)}
    n = len(order)
    table = np.full((n, 256), -1, dtype=np.int32)
    for s in order:
        row = raw[s]
        for b in range(256):
            t = row[b]
            if t >= 0 and t in index:
                table[index[s], b] = index[t]
    accept = np.array([s in finals for s in order], dtype=np.uint8)
    # closure R_T(s)
    succ = [sorted({int(t) for t in table[s] if t >= 0}) for s in range(n)]
    closure: list[list[int]] = []
    for s in range(n):
        seen = {s}
        todo = [s]
        while todo:
            u = todo.pop()
            for v in succ[u]:
                if v not in seen:
                    seen.add(v)
                    todo.append(v)
        closure.append(sorted(seen))
    table.setflags(write=False)
    accept.setflags(write=False)
    return table, accept, closure


class TerminalDFA:
    """One terminal as a trimmed byte DFA.

    ``table[s, b]`` is the next state or -1 (dead), state 0 is the start, ``accept[s]`` marks accepting
    states, ``closure[s]`` lists the states reachable from ``s`` in zero or more steps (R_T in the spec:
    what a lexeme in state ``s`` can become after an unknown masked gap).
    """

    def __init__(self, name: str, regex: str, silent: bool = False):
        self.name = name
        self.regex = regex
        self.silent = silent
        try:
            self.table, self.accept, self.closure = _tabulate(regex)
        except ValueError as exc:
            raise ValueError(f"terminal {name}: {exc}") from None
        self.n_states = int(self.table.shape[0])
        self._shortest_cache: dict[tuple[int, int], bytes | None] = {}

    def accepts(self, data: bytes) -> bool:
        s = 0
        for b in data:
            s = int(self.table[s, b])
            if s < 0:
                return False
        return bool(self.accept[s])

    def shortest(self, src: int, dst: int | None = None) -> bytes | None:
        """Shortest byte string leading ``src`` to ``dst`` (to any accepting state if ``dst`` is None)."""
        key = (src, -1 if dst is None else dst)
        if key in self._shortest_cache:
            return self._shortest_cache[key]
        prev: dict[int, tuple[int, int] | None] = {src: None}
        frontier = [src]
        goal = None
        if (dst is None and self.accept[src]) or dst == src:
            goal = src
        while frontier and goal is None:
            nxt = []
            for u in frontier:
                for b in BYTE_ORDER:
                    v = int(self.table[u, b])
                    if v >= 0 and v not in prev:
                        prev[v] = (u, b)
                        if (dst is None and self.accept[v]) or v == dst:
                            goal = v
                            break
                        nxt.append(v)
                if goal is not None:
                    break
            frontier = nxt
        out = None
        if goal is not None:
            path = []
            v = goal
            while prev[v] is not None:
                u, b = prev[v]
                path.append(b)
                v = u
            out = bytes(reversed(path))
        self._shortest_cache[key] = out
        return out


def _literal_regex(value: str) -> str:
    """Regex for a literal string, matched byte for byte on its UTF-8 encoding (latin-1 view)."""
    import re

    return re.escape(value.encode("utf-8").decode("latin-1"))


def _terminal_regex(tdef) -> str:
    from lark.lexer import PatternStr

    pat = tdef.pattern
    if isinstance(pat, PatternStr):
        rx = _literal_regex(pat.value)
        if pat.flags:
            rx = "(?%s:%s)" % ("".join(sorted(pat.flags)), rx)
        return rx
    rx = pat.to_regexp()
    if any(ord(c) > 0x7F for c in rx):
        raise ValueError(f"terminal {tdef.name}: non-ASCII characters in a regex are not supported "
                         f"(write them as a literal string instead)")
    return rx


def _lark_error(exc: Exception, where: str) -> ValueError:
    line = getattr(exc, "line", None)
    col = getattr(exc, "column", None)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    pos = f" at line {line}, column {col}" if line not in (None, -1) else ""
    return ValueError(f"grammar {where}: syntax error{pos}: {first}")


@dataclass
class Grammar:
    """A grammar compiled for the feasibility oracle.

    Build with :func:`load_grammar` (``"json"``, a path to a ``.lark`` file, or grammar text) or
    ``Grammar.from_lark(text)``. Attributes used by the kernels are numpy int32 arrays (CSR layout);
    ``lark`` keeps a parser for validating final outputs (``lexer='dynamic_complete'`` — the same
    "all tokenizations" lexing semantics as the oracle).
    """

    text: str
    start: str
    terminals: list[TerminalDFA]
    nt_names: list[str]
    rules: list[tuple]  # (kind, A, x, y): kind 0 eps, 1 term (x=t), 2 unit (x=B), 3 binary (x=B, y=C)
    start_nt: int
    key: str = ""
    arrays: dict = field(default_factory=dict)
    _parser: object = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_lark(cls, text: str, start: str = "start", where: str = "<text>") -> "Grammar":
        import lark

        try:
            parser = lark.Lark(text, parser="earley", lexer="dynamic_complete", start=start, keep_all_tokens=True)
        except lark.exceptions.UnexpectedInput as exc:
            raise _lark_error(exc, where) from None
        except lark.exceptions.LarkError as exc:
            msg = " ".join(str(exc).split())
            raise ValueError(f"grammar {where}: {msg}") from None
        ignore = list(parser.ignore_tokens)
        tdefs = {t.name: t for t in parser.terminals}
        used: list[str] = []
        seen = set()
        body_rules: list[tuple[str, list[tuple[bool, str]]]] = []
        for r in parser.rules:
            body = [(s.is_term, s.name) for s in r.expansion]
            body_rules.append((r.origin.name, body))
            for is_t, nm in body:
                if is_t and nm not in seen:
                    seen.add(nm)
                    used.append(nm)
        for nm in ignore:
            if nm not in seen:
                seen.add(nm)
                used.append(nm)
        terms = [TerminalDFA(nm, _terminal_regex(tdefs[nm]), silent=nm in ignore) for nm in used]
        tindex = {t.name: i for i, t in enumerate(terms)}
        g = cls._normal_form(text, start, terms, tindex, body_rules, [tindex[nm] for nm in ignore], where)
        g._parser = parser
        return g

    @classmethod
    def _normal_form(cls, text, start, terms, tindex, body_rules, ignore_ids, where) -> "Grammar":
        names: list[str] = []
        nt_id: dict[str, int] = {}

        def nt(name: str) -> int:
            if name not in nt_id:
                nt_id[name] = len(names)
                names.append(name)
            return nt_id[name]

        rules: set[tuple] = set()
        s0 = nt("$start")
        nt(start)
        # symbols: ('t', id) terminal, ('n', id) nonterminal
        wrapped: dict[int, int] = {}
        igns = None
        if ignore_ids:
            igns = nt("$ign*")
            for i in ignore_ids:
                px = nt(f"$t:{terms[i].name}")
                rules.add((1, px, i, -1))
                rules.add((2, igns, px, -1))
                rules.add((3, igns, px, igns))
            rules.add((2, s0, nt_id[start], -1))
            rules.add((3, s0, igns, nt_id[start]))
        else:
            rules.add((2, s0, nt_id[start], -1))

        def term_symbol(t: int) -> tuple[str, int]:
            """With ignored terminals: W_t -> t | t IGNS (lexeme then optional ignored text)."""
            if igns is None:
                return ("t", t)
            if t not in wrapped:
                w = nt(f"$w:{terms[t].name}")
                px = nt(f"$t:{terms[t].name}")
                rules.add((1, px, t, -1))
                rules.add((2, w, px, -1))
                rules.add((3, w, px, igns))
                wrapped[t] = w
            return ("n", wrapped[t])

        suffix_nt: dict[tuple, int] = {}

        def as_nt(sym: tuple[str, int]) -> int:
            if sym[0] == "n":
                return sym[1]
            px = nt(f"$t:{terms[sym[1]].name}")
            rules.add((1, px, sym[1], -1))
            return px

        for origin, body in body_rules:
            a = nt(origin)
            syms = [term_symbol(tindex[nm]) if is_t else ("n", nt(nm)) for is_t, nm in body]
            if not syms:
                rules.add((0, a, -1, -1))
            elif len(syms) == 1:
                k, x = syms[0]
                rules.add((1, a, x, -1) if k == "t" else (2, a, x, -1))
            else:
                ids = [as_nt(s) for s in syms]
                head = a
                while len(ids) > 2:
                    rest = tuple(ids[1:])
                    if rest not in suffix_nt:
                        suffix_nt[rest] = nt("$s:" + ",".join(names[i] for i in rest))
                        new = True
                    else:
                        new = False
                    rules.add((3, head, ids[0], suffix_nt[rest]))
                    if not new:
                        ids = None
                        break
                    head = suffix_nt[rest]
                    ids = list(rest)
                if ids is not None:
                    rules.add((3, head, ids[0], ids[1]))
        # productive fixpoint
        rules_l = sorted(rules)
        prod: set[int] = set()
        changed = True
        while changed:
            changed = False
            for kind, a, x, y in rules_l:
                if a in prod:
                    continue
                ok = (kind in (0, 1)) or (kind == 2 and x in prod) or (kind == 3 and x in prod and y in prod)
                if ok:
                    prod.add(a)
                    changed = True
        if s0 not in prod:
            raise ValueError(f"grammar {where}: the grammar accepts no string (start rule {start!r} derives nothing finite)")
        rules_l = [r for r in rules_l if r[1] in prod and (r[0] < 2 or r[2] in prod) and (r[0] < 3 or r[3] in prod)]
        # reachable from start
        reach = {s0}
        changed = True
        while changed:
            changed = False
            for kind, a, x, y in rules_l:
                if a in reach:
                    for c in ((x,) if kind == 2 else (x, y) if kind == 3 else ()):
                        if c not in reach:
                            reach.add(c)
                            changed = True
        rules_l = [r for r in rules_l if r[1] in reach]
        keep = sorted(reach)
        remap = {old: new for new, old in enumerate(keep)}
        final_rules = []
        for kind, a, x, y in rules_l:
            final_rules.append((kind, remap[a], remap[x] if kind >= 2 else x, remap[y] if kind == 3 else -1))
        g = cls(text=text, start=start, terminals=terms, nt_names=[names[i] for i in keep],
                rules=final_rules, start_nt=remap[s0])
        g.key = hashlib.sha1(text.encode("utf-8") + start.encode()).hexdigest()
        g._build_arrays()
        return g

    # ------------------------------------------------------------------ kernel arrays
    def _build_arrays(self) -> None:
        n_nt = len(self.nt_names)
        n_t = len(self.terminals)

        def csr(pairs: list[tuple[int, ...]], n: int, width: int):
            pairs = sorted(pairs)
            ptr = np.zeros(n + 1, dtype=np.int32)
            for p in pairs:
                ptr[p[0] + 1] += 1
            ptr = np.cumsum(ptr).astype(np.int32)
            cols = [np.array([p[1 + k] for p in pairs], dtype=np.int32) for k in range(width)]
            return ptr, cols

        by_t, unit, left, right, eps = [], [], [], [], []
        for rid, (kind, a, x, y) in enumerate(self.rules):
            if kind == 0:
                eps.append((a, rid))
            elif kind == 1:
                by_t.append((x, a, rid))
            elif kind == 2:
                unit.append((x, a, rid))
            else:
                left.append((x, y, a, rid))   # popped B=x finds C=y to its right
                right.append((y, x, a, rid))  # popped B=y finds C=x to its left
        ar = {}
        ar["t_ptr"], (ar["t_a"], ar["t_rule"]) = csr(by_t, n_t, 2)
        ar["u_ptr"], (ar["u_a"], ar["u_rule"]) = csr(unit, n_nt, 2)
        ar["l_ptr"], (ar["l_c"], ar["l_a"], ar["l_rule"]) = csr(left, n_nt, 3)
        ar["r_ptr"], (ar["r_c"], ar["r_a"], ar["r_rule"]) = csr(right, n_nt, 3)
        ar["eps_a"] = np.array([a for a, _ in eps], dtype=np.int32)
        ar["eps_rule"] = np.array([r for _, r in eps], dtype=np.int32)
        # flattened terminal automata: global state ids
        offs, total = [], 0
        for t in self.terminals:
            offs.append(total)
            total += t.n_states
        step = np.full(total * 256, -1, dtype=np.int32)
        acc = np.zeros(total, dtype=np.uint8)
        gterm = np.zeros(total, dtype=np.int32)
        clo_ptr = np.zeros(total + 1, dtype=np.int32)
        clo = []
        for ti, t in enumerate(self.terminals):
            o = offs[ti]
            tab = t.table.astype(np.int64)
            tab = np.where(tab >= 0, tab + o, -1)
            step[o * 256:(o + t.n_states) * 256] = tab.reshape(-1)
            acc[o:o + t.n_states] = t.accept
            gterm[o:o + t.n_states] = ti
            for s in range(t.n_states):
                clo.append([o + c for c in t.closure[s]])
        for i, c in enumerate(clo):
            clo_ptr[i + 1] = clo_ptr[i] + len(c)
        ar["g_step"] = step
        ar["g_acc"] = acc
        ar["g_term"] = gterm
        ar["g_start"] = np.array(offs, dtype=np.int32)
        ar["clo_ptr"] = clo_ptr
        ar["clo_idx"] = np.array([x for c in clo for x in c], dtype=np.int32)
        self.arrays = ar
        self.state_offsets = offs
        self._shortest_nt = None

    # ------------------------------------------------------------------ helpers
    @property
    def n_nonterminals(self) -> int:
        return len(self.nt_names)

    def parses(self, text: str | bytes) -> bool:
        """True when lark accepts ``text`` (the final validator; all-tokenizations lexing).

        Caveat: lark's dynamic lexers find a terminal's lexemes through Python ``re`` (leftmost-first
        alternation, then shorter prefixes), so a regex like ``/1|12/`` never yields ``12`` to lark while the
        oracle (true DFA semantics) accepts it. Write alternations longest-first (the schema compiler does).
        """
        import lark

        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                return False
        try:
            self._parser.parse(text)
            return True
        except lark.exceptions.LarkError:
            return False

    def shortest_terminals(self, a: int) -> list[int]:
        """A shortest (in bytes) terminal sequence derived by nonterminal ``a`` (for gap fillings)."""
        if self._shortest_nt is None:
            inf = float("inf")
            tcost = [len(t.shortest(0) or b"") for t in self.terminals]
            cost = [inf] * self.n_nonterminals
            best: list[int] = [-1] * self.n_nonterminals
            changed = True
            while changed:
                changed = False
                for rid, (kind, a_, x, y) in enumerate(self.rules):
                    c = (0 if kind == 0 else tcost[x] if kind == 1 else cost[x] if kind == 2 else cost[x] + cost[y])
                    # prefer strictly cheaper; ties keep the first rule found (deterministic)
                    if c < cost[a_]:
                        cost[a_] = c
                        best[a_] = rid
                        changed = True
            self._shortest_nt = best
        out: list[int] = []
        stack = [a]
        while stack:
            x = stack.pop()
            kind, _, b, c = self.rules[self._shortest_nt[x]]
            if kind == 1:
                out.append(b)
            elif kind == 2:
                stack.append(b)
            elif kind == 3:
                stack.append(c)
                stack.append(b)
        return out


_CACHE: dict[tuple[str, str], Grammar] = {}


def load_grammar(spec: "str | Path | Grammar | dict" = "json", start: str = "start") -> Grammar:
    """Load a grammar.

    ``spec``: a :class:`Grammar` (returned as is); ``"json"`` (the built-in default); a path to a ``.lark``
    file; a dict (a JSON Schema, compiled by :func:`dllm.grammars.schema.schema_to_lark`); otherwise grammar
    text in Lark EBNF. Compiled grammars are cached process-wide by text.
    """
    if isinstance(spec, Grammar):
        return spec
    where = "<text>"
    if isinstance(spec, dict):
        from .schema import schema_to_lark

        text, where = schema_to_lark(spec), "<json schema>"
    elif isinstance(spec, Path) or (isinstance(spec, str) and (spec.endswith(".lark") or spec in ("json",))):
        path = BUILTIN_DIR / "json.lark" if spec == "json" else Path(spec)
        if not path.exists():
            raise ValueError(f"grammar file not found: {path}")
        text, where = path.read_text(encoding="utf-8"), str(path)
    else:
        text = str(spec)
    key = (text, start)
    if key not in _CACHE:
        _CACHE[key] = Grammar.from_lark(text, start=start, where=where)
    return _CACHE[key]
