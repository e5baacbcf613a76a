"""The hot loop: canvas -> terminal NFA (``build_nfa``) and CFG ∩ NFA emptiness (``search``).

Both functions are written once, in the subset of Python that numba compiles, and run either compiled
(``@njit(cache=True, nogil=True)``) or interpreted. The pure-Python path is *the same source*, so the two
give identical answers by construction (tests still compare them); it is slow (numpy scalar indexing)
and meant for tests, tiny canvases and machines without numba. Backend choice: the ``backend=`` argument
of the oracle, else the ``DLLM_GRAMMAR_BACKEND`` environment variable (``numba`` | ``python`` | ``auto``,
default ``auto`` = numba when it imports). ``nogil=True`` lets an engine check different batch rows from a
thread pool.

Canvas encoding (``cells``, int32): a token id >= 0 is committed text, ``MASK = -1`` is a masked cell,
``EOS = -2`` is an end-of-output cell. Semantics (spec §2.2, with this toolkit's choices):

* the output ends at the first EOS; a committed non-EOS token after it makes the canvas infeasible
  (choice: ``eos_overwrites_tail=False`` — nothing is ever overwritten, so infeasibility is monotone and
  the ban list stays valid for the whole generation; masks after the first EOS are fine, they will be EOS);
* a maximal run of m masks with m <= ``max_cells`` that touches cells ``focus_lo..focus_hi`` is **unrolled**: m copies of the cell automaton (the
  vocabulary's minimal DFA over byte classes, ``cells.py``), the end of one token being the start of the
  next, so it holds exactly m tokens; before an end of output (EOS or the region end) every junction
  between tokens is also an end, so it holds at most m. A longer run is one *loose gap* = any byte string,
  possibly empty (the reference's semantics). ``split_at`` (a masked cell, or -1) cuts its run in three: the
  cells before it, the cell itself (always unrolled) and the cells after it, each part then treated by the
  rule above (a sound over-approximation of the whole run; used to pick one cell's token in a witness);
* a run listed in ``counted`` (start cells) is laid out as **one looped copy** of the cell automaton: a token
  may end by returning to the copy's root (the next token) or by leaving the run, and both edges cost one
  token; every other edge costs nothing. ``search_counted`` then asks for a derivation whose lexemes cost at
  most a budget, so a run of m masks holds at most m tokens without m copies of the automaton (the only
  cycles of the graph are these back edges). What lexemes starting inside such a run do there is the same in
  every run: ``make_template=True`` on a lone counted run returns it, and ``template`` lays it into each
  counted run. So is what a lexeme entering the run in lexer state s does there (the edges it completes
  inside, the states it leaves in, each at its cheapest count, and what lexemes starting at nodes that only
  its ends reach do): ``seed=s`` sweeps that once per state (given the template, whose lexemes it leaves out),
  and ``template[8:]`` (the entry table) applies it to each lexeme at the run's root, so the sweep jumps from a
  counted run's root to its exit;
* with a cell table (``cell_tm``, the template and entry table of one unrolled cell, swept once per oracle) the
  sweep jumps from each unrolled cell's junction to the next the same way (its byte edges are still laid out, for a
  witness to spell lexemes along);
* ``snap_at`` (a cell index) returns the sweep's state where that cell starts (``_snapshot``: lexeme edges so far,
  reached and started nodes, lexemes in progress), taken on a canvas whose cells before it are committed text, and
  ``resume`` takes such a snapshot back: the sweep goes on from there (the layout is the same up to that node);
* the end of the output is anchored (the last lexeme must be complete) when an EOS follows a committed
  cell, or — with ``open_end=False``, the oracle's default — when the canvas simply ends after a committed
  cell; with ``open_end=True`` (the reference's behaviour) a canvas without EOS has an open trailing gap.

NFA: the canvas becomes a DAG of byte edges whose nodes are numbered in topological order: one node per
byte boundary of committed text, one node per (cell, automaton state) of an unrolled run (edges carry one
representative byte per class, which the lexer cannot tell apart from the others), and a loose gap marks
its node as a *gap node* with an implicit self-loop on every terminal. A sweep in node order keeps every
lexeme in progress as (origin node, global DFA state, tokens counted) and pushes it along every byte edge
(a counted run's nodes are swept again while its back edges bring new lexemes to its root); at a loose gap
each one is widened to its closure R_T, and lexemes may start inside it (closure of the start state). A
lexeme reaching an accepting state at node w emits the edge (origin, T, w, tokens counted). Without counted
runs edges therefore always go forward (I1) and gap nodes carry no explicit self-loop (I2); ``search`` relies
on both and is only given such graphs. Only nodes where a lexeme ended (or node 0)
start lexemes; a backward pass keeps the nodes that reach an end node; nodes are renumbered in order. If
node 0 reaches no end the canvas is infeasible without touching the grammar (a pure lexing failure, the
cheapest rejection).

Search: bottom-up Bar-Hillel worklist over triples (p, A, q) ("A derives a terminal string leading NFA
node p to q") on a dense chart, seeded by edges (A -> t), gap self-loops ((g, A, g) for every productive
A: the loop derives any terminal string) and epsilon rules ((p, A, p)); binary rules scan only one side
thanks to (I1). Early exit as soon as some (0, S, q) with q an end node appears (its index is returned). A work cap (pops) returns status 2, which the
oracle treats as a rejection and counts. With ``want_bp`` the first derivation of every triple is kept
(rule id + split node or edge index) for witness reconstruction; derivations only point to earlier
triples, so following them always terminates.
"""
from __future__ import annotations

import os

import numpy as np

try:  # the LLVM cttz intrinsic, used by the numba search kernel only
    from numba.cpython.unsafe.numbers import trailing_zeros
except Exception:  # pragma: no cover - numba missing: the pure-Python mirror is used instead
    def trailing_zeros(x):
        return (int(x) & -int(x)).bit_length() - 1

def _helper(fn, inline: str = "never"):
    """Compile a function the kernels call (numba compiles a kernel only if every global it calls is compiled);
    without numba it stays plain Python, like the kernels' fallback."""
    try:
        import numba

        return numba.njit(cache=True, nogil=True, inline=inline)(fn)
    except Exception:  # pragma: no cover - numba missing
        return fn


def _inlined(fn):
    """A helper numba inlines into its caller (``inline="always"``): a call that passes arrays would count their
    references at every push, the cost the fixed working arrays removed (see ``build_nfa``)."""
    return _helper(fn, inline="always")


@_inlined
def _edge(es, et, ed, ec, ne, origin, terminal, end, cost):
    """Append the lexeme edge (origin, terminal, end, cost) at ``ne``: the new count, or ``ne`` when the arrays are full
    (``build_nfa`` then reports it is out of room)."""
    if ne == es.shape[0]:
        return ne
    es[ne] = origin
    et[ne] = terminal
    ed[ne] = end
    ec[ne] = cost
    return ne + 1


@_inlined
def _pend(p_next, p_o, p_s, p_c, head, node, npend, origin, state, cost):
    """Queue a lexeme in progress (origin, DFA state, cost) at ``node``: the new count, or ``npend`` when full."""
    if npend == p_o.shape[0]:
        return npend
    p_o[npend] = origin
    p_s[npend] = state
    p_c[npend] = cost
    p_next[npend] = head[node]
    head[node] = npend
    return npend + 1


@_inlined
def _queue(b_head, b_next, b_item, nb, idx, cost):
    """Queue triple ``idx`` at ``cost`` (one LIFO list per cost, ``search_counted``): the new count, or ``nb`` when
    the queue is full (the search then reports it is out of room)."""
    if nb == b_item.shape[0]:
        return nb
    b_item[nb] = idx
    b_next[nb] = b_head[cost]
    b_head[cost] = nb
    return nb + 1


@_helper
def _grown(a, n):
    """``a`` with twice the room, its first ``n`` entries kept (the kernels' growable arrays)."""
    b = np.empty(2 * a.shape[0], a.dtype)
    b[:n] = a[:n]
    return b


@_helper
def _run_end(cells, j, e, split_at):
    """End (exclusive) of the run of masks that starts at cell ``j``; ``split_at`` is a run of its own."""
    k = j + 1
    if j != split_at:
        while k < e and cells[k] == -1 and k != split_at:
            k += 1
    return k


@_helper
def _counted(counted, j):
    """Is the run of masks that starts at cell ``j`` one of the counted runs (laid out as one looped automaton)?"""
    for i in range(counted.shape[0]):
        if counted[i] == j:
            return True
    return False


@_helper
def _unrolled(j, k, L, open_end, max_cells, focus_lo, focus_hi, split_at):
    """Is the run of masks j..k-1 laid out cell by cell (else: one loose gap)?"""
    if j == split_at:
        return True
    return k - j <= max_cells and not (k == L and open_end) and j <= focus_hi and k > focus_lo


@_helper
def _template(n_cs, N, n_gs, head, p_next, p_o, p_s, p_c, started, es, et, ed, ec, ne):
    """``build_nfa``'s result in ``make_template`` mode (a lone counted run at node 0, swept up to its exit): the
    lexeme edges of lexemes that start inside the run, the lexemes still in progress when they leave it
    (cheapest cost per (origin, state)) and which nodes started lexemes, in the slots of the usual tuple:
    (3, n_cs, exit origins, started flags, edge sources, terminals, ends, -, exit states, exit costs, -, -, -,
    edge costs)."""
    best = np.full(n_gs * N, -1, dtype=np.int32)
    keys = np.empty(64, dtype=np.int64)
    nx = 0
    k = head[n_cs]
    while k >= 0:
        key = p_s[k] * N + p_o[k]
        if best[key] < 0:
            if nx == keys.shape[0]:
                keys = _grown(keys, nx)
            keys[nx] = key
            nx += 1
            best[key] = p_c[k]
        elif p_c[k] < best[key]:
            best[key] = p_c[k]
        k = p_next[k]
    xo = np.empty(nx, dtype=np.int32)
    xs = np.empty(nx, dtype=np.int32)
    xc = np.empty(nx, dtype=np.int32)
    for i in range(nx):
        xo[i] = keys[i] % N
        xs[i] = keys[i] // N
        xc[i] = best[keys[i]]
    empty_b = np.zeros(0, dtype=np.uint8)
    return (3, n_cs, xo, started[:n_cs].copy(), es[:ne].copy(), et[:ne].copy(), ed[:ne].copy(), empty_b,
            xs, xc, empty_b, empty_b, np.zeros(0, dtype=np.int32), ec[:ne].copy())


@_helper
def _snapshot(u, head, p_next, p_o, p_s, p_c, reach, started, es, et, ed, ec, ne):
    """``build_nfa``'s result with ``snap_at``: the sweep's state where the committed prefix ends (node ``u``), in the
    slots of the usual tuple: (4, u, pending origins, reach flags, edge sources, terminals, ends, started flags,
    pending states, pending costs, -, -, -, edge costs); ``resume`` takes it back (see ``Oracle._prefix``)."""
    n = 0
    k = head[u]
    while k >= 0:
        n += 1
        k = p_next[k]
    po = np.empty(n, dtype=np.int32)
    ps = np.empty(n, dtype=np.int32)
    pc = np.empty(n, dtype=np.int32)
    i = 0
    k = head[u]
    while k >= 0:
        po[i] = p_o[k]
        ps[i] = p_s[k]
        pc[i] = p_c[k]
        i += 1
        k = p_next[k]
    empty_b = np.zeros(0, dtype=np.uint8)
    return (4, u, po, reach[:u].copy(), es[:ne].copy(), et[:ne].copy(), ed[:ne].copy(), started[:u].copy(), ps, pc,
            empty_b, empty_b, np.zeros(0, dtype=np.int32), ec[:ne].copy())


MASK = -1
EOS = -2


def build_nfa(cells, tok_off, tok_data, open_end, g_step, g_acc, g_term, g_start, clo_ptr, clo_idx,
              c_step, c_final, c_live, c_byte, max_cells, focus_lo, focus_hi, split_at, counted,
              template, make_template, seed, cell_tm, cell_alone, snap_at, resume, work, marks, base):
    n_terms = g_start.shape[0]
    n_gs = g_acc.shape[0]
    n_cs = c_final.shape[0]
    n_cls = c_byte.shape[0]
    L = cells.shape[0]
    e = L
    for j in range(L):
        if cells[j] == -2:
            e = j
            break
    empty_i = np.zeros(0, dtype=np.int32)
    empty_b = np.zeros(0, dtype=np.uint8)
    for j in range(e + 1, L):
        if cells[j] >= 0:
            return (0, 0, empty_i, empty_b, empty_i, empty_i, empty_i, empty_b,
                    empty_i, empty_i, empty_b, empty_b, empty_i, empty_i)
    # a counted run's entry table (``template[8:]``, swept once per oracle): for a lexeme in state s entering at the
    # root, the lexeme edges it completes inside the run and the states it leaves in, at their cheapest; with it the
    # sweep jumps over the run, so the run's byte edges are not laid out
    entry = template[8].shape[0] > 0
    # an unrolled cell's table (``cell_tm``, the same layout for one cell of the automaton, swept once per oracle):
    # the sweep jumps from each cell's junction to the next
    by_cell = cell_tm[8].shape[0] > 0
    # ---- the canvas as a graph of byte edges: count, then lay out
    cell_edges = -1  # byte edges of one copy of the cell automaton (and of the looped copy): counted when needed
    loop_edges = 0
    N = 1
    M = 0
    j = 0
    while j < e:
        if cells[j] >= 0:
            N += tok_off[cells[j] + 1] - tok_off[cells[j]]
            M += tok_off[cells[j] + 1] - tok_off[cells[j]]
            j += 1
        else:
            k = _run_end(cells, j, e, split_at)
            if cell_edges < 0:  # the first masked run: a pass over the automaton's edges (9,310 for a tiny-cot schema,
                cell_edges = 0  # a third of a text-only build when it ran on every build)
                for a in range(n_cs):
                    for cl in range(n_cls):
                        t = c_step[a * n_cls + cl]
                        if t >= 0:
                            cell_edges += np.int64(c_live[t]) + np.int64(c_final[t])
                            loop_edges += np.int64(c_live[t]) + 2 * np.int64(c_final[t])
            if _counted(counted, j):
                N += n_cs
                M += 0 if entry else loop_edges
            elif _unrolled(j, k, L, open_end, max_cells, focus_lo, focus_hi, split_at):
                N += (k - j) * n_cs
                M += (k - j) * cell_edges
            j = k
    d_src = np.empty(M, dtype=np.int32)
    d_dst = np.empty(M, dtype=np.int32)
    d_byte = np.empty(M, dtype=np.uint8)
    d_cell = np.full(M, -1, dtype=np.int32)
    d_cost = np.zeros(M, dtype=np.uint8)
    d_gap = np.zeros(N, dtype=np.uint8)
    is_end = np.zeros(N, dtype=np.uint8)
    is_root = np.zeros(N, dtype=np.uint8)  # a counted run's looped automaton: nodes root .. root + n_cs - 1
    is_cell = np.zeros(N, dtype=np.uint8)  # the junction of an unrolled cell swept by ``cell_tm``
    u = 0
    m = 0
    j = 0
    snap_u = -1  # the node where cell ``snap_at`` starts
    while j < e:
        if j == snap_at:
            snap_u = u
        c = cells[j]
        if c >= 0:
            for k in range(tok_off[c], tok_off[c + 1]):
                d_src[m] = u
                d_dst[m] = u + 1
                d_byte[m] = tok_data[k]
                m += 1
                u += 1
            j += 1
            continue
        k = _run_end(cells, j, e, split_at)
        if _counted(counted, j):
            # one looped copy of the cell automaton: a token's end returns to the root (the next token) or
            # leaves the run; both cost one token, the only weighted edges of the graph
            is_root[u] = 1
            if k == e:
                is_end[u] = 1
            for a in range(0 if entry else n_cs):
                for cl in range(n_cls):
                    t = c_step[a * n_cls + cl]
                    if t < 0:
                        continue
                    for kind in range(3):  # stay in the token / end it and go on / end it and leave the run
                        if (c_live[t] if kind == 0 else c_final[t]) != 0:
                            d_src[m] = u + a
                            d_dst[m] = u + t if kind == 0 else (u if kind == 1 else u + n_cs)
                            d_byte[m] = c_byte[cl]
                            d_cost[m] = 0 if kind == 0 else 1
                            m += 1
            u += n_cs
        elif _unrolled(j, k, L, open_end, max_cells, focus_lo, focus_hi, split_at):
            # one copy of the cell automaton per cell: node J_i + a is state a of cell i (a = 0: junction)
            for i in range(k - j):
                if k == e:
                    is_end[u] = 1  # masks before an end of output may all be EOS
                if by_cell:
                    is_cell[u] = 1  # the sweep jumps over it; its byte edges stay for a witness to spell lexemes
                for a in range(n_cs):
                    for cl in range(n_cls):
                        t = c_step[a * n_cls + cl]
                        if t < 0:
                            continue
                        for ends_token in range(2):  # stay in the token, or end it: on to the next junction
                            if (c_final[t] if ends_token else c_live[t]) != 0:
                                d_src[m] = u + a
                                d_dst[m] = u + n_cs if ends_token else u + t
                                d_byte[m] = c_byte[cl]
                                d_cell[m] = j + i
                                m += 1
                u += n_cs
        else:
            d_gap[u] = 1  # any byte string, possibly empty
        j = k
    if j == snap_at:
        snap_u = u
    if e == L and open_end:
        d_gap[u] = 1
    is_end[u] = 1
    d_ptr = np.zeros(N + 1, dtype=np.int32)
    for k in range(M):
        d_ptr[d_src[k] + 1] += 1
    for v in range(N):
        d_ptr[v + 1] += d_ptr[v]
    # ---- sweep in node order, keeping every lexeme in progress as (origin node, global DFA state, tokens
    # counted so far); the counted run's nodes are swept again (a "round") while its back edges bring new
    # lexemes to its root, so each round costs one more token and a lexeme first seen at the root is cheapest
    # "seen at this node" marks (lexeme keys state * N + origin; edge keys terminal * N + origin) and the root a
    # lexeme was at: the caller's arrays (``marks``, kept between builds), never cleared: this build writes values in
    # [b0, b0 + 2^32) and every earlier one wrote smaller ones; when they are too short for this canvas, fresh ones,
    # and the sizes it needs go back in ``base[1:]``
    need_g = n_gs * N
    need_t = n_terms * N
    if marks[0].shape[0] >= need_g and marks[1].shape[0] >= need_t:
        stamp, estamp, at_root, slot, eslot = marks[0], marks[1], marks[2], marks[3], marks[4]
        b0 = base[0]
        base[0] = b0 + 4294967296
    else:
        stamp = np.zeros(need_g, dtype=np.int64)
        estamp = np.zeros(need_t, dtype=np.int64)
        at_root = np.zeros(need_g, dtype=np.int64)  # b0 + 1 + the root a lexeme was at
        slot = np.empty(need_g, dtype=np.int64)
        eslot = np.empty(need_t, dtype=np.int64)
        b0 = np.int64(0)
        base[1] = max(base[1], need_g)
        base[2] = max(base[2], need_t)
    started = np.zeros(N, dtype=np.uint8)
    reach = np.zeros(N, dtype=np.uint8)
    reach[0] = 1
    head = np.full(N, -1, dtype=np.int32)
    # the caller's room (``work``: 14 arrays of ``cap`` entries, kept between builds), never grown here: an array
    # reassigned inside these loops (grown on demand) made numba count references at every iteration (atomic
    # increments, about a third of a build's time, measured with perf); pending lexemes, lexemes in progress at a node
    # and lexeme edges get ``cap`` each, and a build that runs out says so (status 5: the caller retries with more)
    cap = work[0].shape[0]
    p_next, p_o, p_s, p_c = work[0], work[1], work[2], work[3]
    act_o, act_s, act_c, nxt_o, nxt_s, nxt_c = work[4], work[5], work[6], work[7], work[8], work[9]
    es, et, ed, ec = work[10], work[11], work[12], work[13]
    npend = 0
    over = False
    ne = 0
    tick = b0
    # a committed prefix swept before (``resume``, a snapshot taken with ``snap_at``): its lexeme edges, which nodes it
    # reached and started lexemes at, and the lexemes in progress at its end node; the sweep goes on from there
    u0 = resume[7].shape[0]
    if u0 > 0:
        for v in range(u0):
            reach[v] = resume[7][v]
            started[v] = resume[8][v]
        for k in range(resume[3].shape[0]):
            ne = _edge(es, et, ed, ec, ne, resume[3][k], resume[4][k], resume[5][k], resume[6][k])
        for k in range(resume[0].shape[0]):
            npend = _pend(p_next, p_o, p_s, p_c, head, u0, npend, resume[0][k], resume[1][k], resume[2][k])
    tm = template
    if seed >= 0:  # the entry table's sweep (``make_template``): one lexeme in state ``seed`` enters at the root
        p_o[0] = 0
        p_s[0] = seed
        p_c[0] = 0
        p_next[0] = -1
        head[0] = 0
        npend = 1
        # lexemes start only where the template's do not: at nodes that only this lexeme's ends reach
        for a in range(n_cs):
            started[a] = tm[7][a]
    weighted = counted.shape[0] > 0  # else every cost is 0: no cheapest copy to keep
    again = False
    cur = -1  # root of the counted run being swept
    u = u0
    while u < N:
        if make_template and u == n_cs:
            break
        if u == snap_u:  # the snapshot of the committed prefix (taken by a build without counted runs)
            if over or ne == cap or npend == cap:
                over = True
                break
            return _snapshot(u, head, p_next, p_o, p_s, p_c, reach, started, es, et, ed, ec, ne)
        first = is_root[u] == 1 and cur != u  # a counted run's root, not a later round of its sweep
        if is_root[u]:
            cur = u
        tick += 1
        na = 0
        k = head[u]
        head[u] = -1
        while k >= 0:
            key = p_s[k] * N + p_o[k]
            if u == cur:
                if at_root[key] == b0 + u + 1:
                    k = p_next[k]
                    continue
            if stamp[key] != tick:
                stamp[key] = tick
                if na == cap:
                    over = True
                else:
                    if weighted:
                        slot[key] = na
                    act_o[na] = p_o[k]
                    act_s[na] = p_s[k]
                    act_c[na] = p_c[k]
                    na += 1
            elif weighted and p_c[k] < act_c[slot[key]]:
                act_c[slot[key]] = p_c[k]
            k = p_next[k]
        if u == cur:
            for k in range(na):
                at_root[act_s[k] * N + act_o[k]] = b0 + u + 1
        if d_gap[u]:  # the same keep-the-cheapest-copy step as the gather above, written out: as a compiled
            tick += 1  # helper returning the grown lists it made the whole build 1.5x slower (measured)
            nb = 0
            for k in range(na):
                o = act_o[k]
                s = act_s[k]
                for ci in range(clo_ptr[s], clo_ptr[s + 1]):
                    s2 = clo_idx[ci]
                    key = s2 * N + o
                    if stamp[key] != tick:
                        stamp[key] = tick
                        if nb == cap:
                            over = True
                        else:
                            if weighted:
                                slot[key] = nb
                            nxt_o[nb] = o
                            nxt_s[nb] = s2
                            nxt_c[nb] = act_c[k]
                            nb += 1
                    elif weighted and act_c[k] < nxt_c[slot[key]]:
                        nxt_c[slot[key]] = act_c[k]
            for k in range(nb):  # copied back, not swapped (see ``cap``)
                act_o[k] = nxt_o[k]
                act_s[k] = nxt_s[k]
                act_c[k] = nxt_c[k]
            na = nb
        # lexemes completing at node u
        for k in range(na):
            s = act_s[k]
            o = act_o[k]
            if g_acc[s] and (o != u or act_c[k] > 0):  # non-empty: it left u, or went round the counted run
                t = g_term[s]
                key = t * N + o
                if estamp[key] != b0 + u + 1:
                    estamp[key] = b0 + u + 1
                    if weighted:
                        eslot[key] = ne
                    ne = _edge(es, et, ed, ec, ne, o, t, u, act_c[k])
                    reach[u] = 1
                elif weighted and act_c[k] < ec[eslot[key]]:
                    ec[eslot[key]] = act_c[k]
        # an unrolled cell (``cell_tm``) or a counted run met for the first time (``template``): what lexemes starting
        # inside it do there (the same in every one, swept once per oracle with ``make_template``), laid in at its
        # offset; the sweep then follows only the lexemes that enter it
        # (a cell whose junction no lexeme reached gets none: nothing starts there; ``cell_alone``'s entry table then
        # does the lexemes entering it, with the lexemes starting where only they reach)
        lay_cell = is_cell[u] == 1 and (reach[u] == 1 or cell_alone[8].shape[0] == 0)
        if lay_cell or (first and tm[7].shape[0] > 0 and seed < 0):
            xt = cell_tm if is_cell[u] else tm
            for a in range(n_cs):
                started[u + a] = xt[7][a]
            for k in range(xt[0].shape[0]):
                ne = _edge(es, et, ed, ec, ne, u + xt[0][k], xt[1][k], u + xt[2][k], xt[3][k])
                reach[u + xt[2][k]] = 1
            for k in range(xt[4].shape[0]):
                npend = _pend(p_next, p_o, p_s, p_c, head, u + n_cs, npend, u + xt[4][k], xt[5][k], xt[6][k])
        # lexemes starting at node u (inside the gap when u is a loose gap); once per node
        if reach[u] and not started[u]:
            started[u] = 1
            for t in range(n_terms):
                s0 = g_start[t]
                lo = clo_ptr[s0] if d_gap[u] else 0
                hi = clo_ptr[s0 + 1] if d_gap[u] else 1
                for ci in range(lo, hi):
                    s2 = clo_idx[ci] if d_gap[u] else s0
                    if na == cap:
                        over = True
                        break
                    act_o[na] = u
                    act_s[na] = s2
                    act_c[na] = 0
                    na += 1
                    if u == cur:
                        at_root[s2 * N + u] = b0 + u + 1
        if is_cell[u] or (entry and u == cur):  # the entry table does the run (or cell) for the lexemes entering
            xt = (cell_tm if lay_cell else cell_alone) if is_cell[u] else tm  # it: on to its exit
            for k in range(na):
                o = act_o[k]
                s = act_s[k]
                c = act_c[k]
                # origin offset 0: the entering lexeme (cost from c); else a lexeme that started at that node of
                # the run, which only an entering lexeme's end reaches (its cost counts from its own start)
                for q in range(xt[8][s], xt[8][s + 1]):
                    ne = _edge(es, et, ed, ec, ne, o if xt[15][q] == 0 else u + xt[15][q], xt[9][q], u + xt[10][q],
                               (c if xt[15][q] == 0 else 0) + xt[11][q])
                    reach[u + xt[10][q]] = 1
                for q in range(xt[12][s], xt[12][s + 1]):
                    npend = _pend(p_next, p_o, p_s, p_c, head, u + n_cs, npend, o if xt[16][q] == 0 else u + xt[16][q],
                                   xt[13][q], (c if xt[16][q] == 0 else 0) + xt[14][q])
            u += n_cs
            continue
        # every lexeme in progress follows every byte edge leaving u
        for ei in range(d_ptr[u], d_ptr[u + 1]):
            v = d_dst[ei]
            b = d_byte[ei]
            dc = d_cost[ei]
            first = npend
            for k in range(na):
                s2 = g_step[act_s[k] * 256 + b]
                if s2 >= 0:
                    npend = _pend(p_next, p_o, p_s, p_c, head, v, npend, act_o[k], s2, act_c[k] + dc)
            if v == cur and npend > first:
                again = True
        if cur >= 0 and u == cur + n_cs - 1 and again:
            again = False
            u = cur
        else:
            u += 1
    if over or ne == cap or npend == cap:  # out of room (or exactly full): the caller retries with more
        return (5, 0, empty_i, empty_b, empty_i, empty_i, empty_i, empty_b,
                empty_i, empty_i, empty_b, empty_b, empty_i, empty_i)
    if make_template:
        return _template(n_cs, N, n_gs, head, p_next, p_o, p_s, p_c, started, es, et, ed, ec, ne)
    # ---- keep the nodes that are reached from node 0 and reach an end of output (edges are listed by end
    # node, so one backward pass suffices unless the counted run's back edges need more)
    co = np.zeros(N, dtype=np.uint8)
    for v in range(N):
        if is_end[v] and reach[v]:
            co[v] = 1
    grew = True
    while grew:
        grew = False
        for k in range(ne - 1, -1, -1):
            if co[ed[k]] and not co[es[k]]:
                co[es[k]] = 1
                grew = counted.shape[0] > 0 or by_cell  # the tables' edges are not listed by end node
    if not co[0]:
        return (0, 0, empty_i, empty_b, empty_i, empty_i, empty_i, empty_b,
                d_ptr, d_dst, d_byte, d_gap, d_cell, empty_i)
    newid = np.full(N, -1, dtype=np.int32)
    n = 0
    for v in range(N):
        if co[v] and reach[v]:
            newid[v] = n
            n += 1
    node_orig = np.empty(n, dtype=np.int32)
    node_gap = np.empty(n, dtype=np.uint8)
    node_end = np.empty(n, dtype=np.uint8)
    for v in range(N):
        if newid[v] >= 0:
            node_orig[newid[v]] = v
            node_gap[newid[v]] = d_gap[v]
            node_end[newid[v]] = is_end[v]
    kept = 0
    for k in range(ne):  # a template's edge may start at a node no lexeme reaches: it is dropped with the node
        if newid[ed[k]] >= 0 and newid[es[k]] >= 0:
            kept += 1
    ks = np.empty(kept, dtype=np.int32)
    kt = np.empty(kept, dtype=np.int32)
    kd = np.empty(kept, dtype=np.int32)
    kc = np.empty(kept, dtype=np.int32)
    i = 0
    for k in range(ne):
        if newid[ed[k]] >= 0 and newid[es[k]] >= 0:
            ks[i] = newid[es[k]]
            kt[i] = et[k]
            kd[i] = newid[ed[k]]
            kc[i] = ec[k]
            i += 1
    return 1, n, node_orig, node_gap, ks, kt, kd, node_end, d_ptr, d_dst, d_byte, d_gap, d_cell, kc


def search(n, node_gap, node_end, e_src, e_term, e_dst, n_nt, start_nt, t_ptr, t_a, t_rule, u_ptr, u_a, u_rule,
           l_ptr, l_c, l_a, l_rule, r_ptr, r_c, r_a, r_rule, eps_a, eps_rule, want_bp, max_pops):
    """Numba kernel. Chart = two bitset views of the same triples: ``right[(A*n + p)*W + w]`` holds the
    right ends q of (p, A, q), ``left[(A*n + q)*W + w]`` the left ends p; a binary-rule scan is then a
    word-wise ``partner & ~already`` over set bits only. :func:`py_search` mirrors it step for step."""
    W = (n + 63) >> 6
    nn = n * n
    right = np.zeros(n_nt * n * W, dtype=np.int64)
    left = np.zeros(n_nt * n * W, dtype=np.int64)
    size_bp = n_nt * nn if want_bp else 1
    bp_rule = np.full(size_bp, -1, dtype=np.int32)
    bp_aux = np.full(size_bp, -1, dtype=np.int32)
    stack = np.empty(n_nt * nn + 1, dtype=np.int64)  # a triple is pushed once, when its bit is set: never grown
    sp = 0
    one = np.int64(1)
    n_seed = e_src.shape[0] + n + eps_a.shape[0] * n
    # seeds: edges (A -> t), gap self-loops (every A at a gap node), epsilon rules
    for k in range(n_seed):
        if k < e_src.shape[0]:
            t = e_term[k]
            jlo = t_ptr[t]
            jhi = t_ptr[t + 1]
        elif k < e_src.shape[0] + n:
            g = k - e_src.shape[0]
            jlo = 0
            jhi = n_nt if node_gap[g] else 0
        else:
            jlo = 0
            jhi = 1
        for j in range(jlo, jhi):
            if k < e_src.shape[0]:
                a = t_a[j]
                p = e_src[k]
                q = e_dst[k]
                rule = t_rule[j]
                aux = k
            elif k < e_src.shape[0] + n:
                a = j
                p = k - e_src.shape[0]
                q = p
                rule = -2
                aux = -1
            else:
                kk = k - e_src.shape[0] - n
                a = eps_a[kk // n]
                p = kk % n
                q = p
                rule = eps_rule[kk // n]
                aux = -1
            wi = (a * n + p) * W + (q >> 6)
            bit = one << (q & 63)
            if (right[wi] & bit) == 0:
                right[wi] |= bit
                left[(a * n + q) * W + (p >> 6)] |= one << (p & 63)
                idx = a * nn + p * n + q
                if want_bp:
                    bp_rule[idx] = rule
                    bp_aux[idx] = aux
                if a == start_nt and p == 0 and node_end[q]:
                    return 1, bp_rule, bp_aux, idx
                stack[sp] = idx
                sp += 1
    pops = 0
    while sp > 0:
        sp -= 1
        cur = stack[sp]
        pops += 1
        if pops > max_pops:
            return 2, bp_rule, bp_aux, -1
        b = cur // nn
        rem = cur - b * nn
        p = rem // n
        q = rem - p * n
        # A -> B: (p, A, q)
        for j in range(u_ptr[b], u_ptr[b + 1]):
            a = u_a[j]
            wi = (a * n + p) * W + (q >> 6)
            bit = one << (q & 63)
            if (right[wi] & bit) == 0:
                right[wi] |= bit
                left[(a * n + q) * W + (p >> 6)] |= one << (p & 63)
                idx = a * nn + rem
                if want_bp:
                    bp_rule[idx] = u_rule[j]
                if a == start_nt and p == 0 and node_end[q]:
                    return 1, bp_rule, bp_aux, idx
                stack[sp] = idx
                sp += 1
        # A -> B C: partners (q, C, r) give (p, A, r)
        for j in range(l_ptr[b], l_ptr[b + 1]):
            a = l_a[j]
            cb = (l_c[j] * n + q) * W
            ab = (a * n + p) * W
            for w in range(q >> 6, W):
                bits = right[cb + w] & ~right[ab + w]
                while bits != 0:
                    low = bits & -bits
                    bits ^= low
                    r = (w << 6) + trailing_zeros(low)
                    right[ab + w] |= low
                    left[(a * n + r) * W + (p >> 6)] |= one << (p & 63)
                    idx = a * nn + p * n + r
                    if want_bp:
                        bp_rule[idx] = l_rule[j]
                        bp_aux[idx] = q
                    if a == start_nt and p == 0 and node_end[r]:
                        return 1, bp_rule, bp_aux, idx
                    stack[sp] = idx
                    sp += 1
        # A -> C B: partners (r, C, p) give (r, A, q)
        for j in range(r_ptr[b], r_ptr[b + 1]):
            a = r_a[j]
            cb = (r_c[j] * n + p) * W
            ab = (a * n + q) * W
            for w in range(0, (p >> 6) + 1):
                bits = left[cb + w] & ~left[ab + w]
                while bits != 0:
                    low = bits & -bits
                    bits ^= low
                    r = (w << 6) + trailing_zeros(low)
                    left[ab + w] |= low
                    right[(a * n + r) * W + (q >> 6)] |= one << (q & 63)
                    idx = a * nn + r * n + q
                    if want_bp:
                        bp_rule[idx] = r_rule[j]
                        bp_aux[idx] = p
                    if a == start_nt and r == 0 and node_end[q]:
                        return 1, bp_rule, bp_aux, idx
                    stack[sp] = idx
                    sp += 1
    return 0, bp_rule, bp_aux, -1


@_helper
def _bit_index(low):
    """Index of the single set bit of ``low`` (the compiled helper makes the LLVM intrinsic callable from Python)."""
    return trailing_zeros(low)


def search_counted(n, node_gap, node_end, e_src, e_term, e_dst, e_cost, n_nt, start_nt, t_ptr, t_a, u_ptr, u_a,
                   l_ptr, l_c, l_a, r_ptr, r_c, r_a, eps_a, budget, max_pops, room):
    """Is there a derivation whose lexeme edges cost at most ``budget`` tokens in all? Knuth's lightest
    derivation over the same triples as :func:`search`: triples leave a bucket queue in cost order, so a triple
    is final the first time it is popped, and binary rules combine it with final partners only. The graph may
    have cycles here (the counted run loops), so partner scans cover every word. Costs above the budget are
    never queued. 1 feasible, 0 not, 2 work cap, 5 out of ``room`` (queue entries: the caller retries with more; a
    queue grown inside the loop made numba count references at every iteration). The budget is that of the runs listed in ``build_nfa``'s
    ``counted`` (one run, or all long runs together); there is no witness from this search (the plain search
    gives it)."""
    W = (n + 63) >> 6
    nn = n * n
    right = np.zeros(n_nt * n * W, dtype=np.int64)
    left = np.zeros(n_nt * n * W, dtype=np.int64)
    cost = np.full(n_nt * nn, budget + 1, dtype=np.int32)
    b_head = np.full(budget + 1, -1, dtype=np.int64)
    b_next = np.empty(room, dtype=np.int64)
    b_item = np.empty(room, dtype=np.int64)
    nb = 0
    one = np.int64(1)
    for k in range(e_src.shape[0]):
        c = e_cost[k]
        if c > budget:
            continue
        t = e_term[k]
        for j in range(t_ptr[t], t_ptr[t + 1]):
            idx = t_a[j] * nn + e_src[k] * n + e_dst[k]
            if c < cost[idx]:
                cost[idx] = c
                nb = _queue(b_head, b_next, b_item, nb, idx, c)
    for g in range(n):
        if node_gap[g]:
            for a in range(n_nt):
                idx = a * nn + g * n + g
                cost[idx] = 0
                nb = _queue(b_head, b_next, b_item, nb, idx, 0)
    for kk in range(eps_a.shape[0]):
        for p in range(n):
            idx = eps_a[kk] * nn + p * n + p
            cost[idx] = 0
            nb = _queue(b_head, b_next, b_item, nb, idx, 0)
    pops = 0
    for c in range(budget + 1):
        while b_head[c] >= 0:
            it = b_head[c]
            b_head[c] = b_next[it]
            cur = b_item[it]
            if cost[cur] != c:
                continue
            b = cur // nn
            rem = cur - b * nn
            p = rem // n
            q = rem - p * n
            wi = (b * n + p) * W + (q >> 6)
            bit = one << (q & 63)
            if (right[wi] & bit) != 0:
                continue  # already final (queued twice at this cost)
            right[wi] |= bit
            left[(b * n + q) * W + (p >> 6)] |= one << (p & 63)
            if b == start_nt and p == 0 and node_end[q]:
                return 1
            pops += 1
            if pops > max_pops:
                return 2
            for j in range(u_ptr[b], u_ptr[b + 1]):  # A -> B
                idx = u_a[j] * nn + rem
                if c < cost[idx]:
                    cost[idx] = c
                    nb = _queue(b_head, b_next, b_item, nb, idx, c)
            for side in range(2):  # A -> B C: final (q, C, r) give (p, A, r); A -> C B: final (r, C, q) give (r, A, q)
                lo, hi = (l_ptr[b], l_ptr[b + 1]) if side == 0 else (r_ptr[b], r_ptr[b + 1])
                for j in range(lo, hi):
                    if side == 0:
                        a, part, words = l_a[j], l_c[j], right
                        cb, p0, ps, o0, os = (part * n + q) * W, part * nn + q * n, 1, a * nn + p * n, 1
                    else:
                        a, part, words = r_a[j], r_c[j], left
                        cb, p0, ps, o0, os = (part * n + p) * W, part * nn + p, n, a * nn + q, n
                    for w in range(W):
                        bits = words[cb + w]
                        while bits != 0:
                            low = bits & -bits
                            bits ^= low
                            r = (w << 6) + _bit_index(low)
                            c2 = c + cost[p0 + r * ps]
                            idx = o0 + r * os
                            if c2 < cost[idx]:
                                if a == start_nt and (p if side == 0 else r) == 0 and node_end[r if side == 0 else q]:
                                    return 1  # a goal within the budget: no need to wait for its turn
                                cost[idx] = c2
                                nb = _queue(b_head, b_next, b_item, nb, idx, c2)
    return 5 if nb == room else 0  # a full queue may have dropped a triple: out of room


def py_search(n, node_gap, node_end, e_src, e_term, e_dst, n_nt, start_nt, t_ptr, t_a, t_rule, u_ptr, u_a, u_rule,
              l_ptr, l_c, l_a, l_rule, r_ptr, r_c, r_a, r_rule, eps_a, eps_rule, want_bp, max_pops):
    """Pure-Python mirror of :func:`search`: Python ints as bitsets, the same seed order, the same LIFO
    worklist, the same rule order and ascending partner order, the same early exit and work cap — so the
    answer *and* the back-pointers (hence the witness) are identical to the numba kernel's."""
    nn = n * n
    right = [0] * (n_nt * n)
    left = [0] * (n_nt * n)
    bp_rule: dict[int, int] = {}
    bp_aux: dict[int, int] = {}
    stack: list[int] = []
    t_ptr, t_a, t_rule = t_ptr.tolist(), t_a.tolist(), t_rule.tolist()
    u_ptr, u_a, u_rule = u_ptr.tolist(), u_a.tolist(), u_rule.tolist()
    l_ptr, l_c, l_a, l_rule = l_ptr.tolist(), l_c.tolist(), l_a.tolist(), l_rule.tolist()
    r_ptr, r_c, r_a, r_rule = r_ptr.tolist(), r_c.tolist(), r_a.tolist(), r_rule.tolist()
    seeds = []
    for k, (p, t, q) in enumerate(zip(e_src.tolist(), e_term.tolist(), e_dst.tolist())):
        for j in range(t_ptr[t], t_ptr[t + 1]):
            seeds.append((t_a[j], p, q, t_rule[j], k))
    for g in range(n):
        if node_gap[g]:
            for a in range(n_nt):
                seeds.append((a, g, g, -2, -1))
    for a, rule in zip(eps_a.tolist(), eps_rule.tolist()):
        for p in range(n):
            seeds.append((a, p, p, rule, -1))
    for a, p, q, rule, aux in seeds:
        bit = 1 << q
        if not right[a * n + p] & bit:
            right[a * n + p] |= bit
            left[a * n + q] |= 1 << p
            idx = a * nn + p * n + q
            if want_bp:
                bp_rule[idx] = rule
                bp_aux[idx] = aux
            if a == start_nt and p == 0 and node_end[q]:
                return 1, bp_rule, bp_aux, idx
            stack.append(idx)
    pops = 0
    while stack:
        cur = stack.pop()
        pops += 1
        if pops > max_pops:
            return 2, bp_rule, bp_aux, -1
        b, rem = divmod(cur, nn)
        p, q = divmod(rem, n)
        for j in range(u_ptr[b], u_ptr[b + 1]):
            a = u_a[j]
            bit = 1 << q
            if not right[a * n + p] & bit:
                right[a * n + p] |= bit
                left[a * n + q] |= 1 << p
                idx = a * nn + rem
                if want_bp:
                    bp_rule[idx] = u_rule[j]
                if a == start_nt and p == 0 and node_end[q]:
                    return 1, bp_rule, bp_aux, idx
                stack.append(idx)
        for j in range(l_ptr[b], l_ptr[b + 1]):
            a = l_a[j]
            row = a * n + p
            bits = right[l_c[j] * n + q] & ~right[row]
            if bits:
                right[row] |= bits
                pbit = 1 << p
                while bits:
                    low = bits & -bits
                    bits ^= low
                    r = low.bit_length() - 1
                    left[a * n + r] |= pbit
                    idx = a * nn + p * n + r
                    if want_bp:
                        bp_rule[idx] = l_rule[j]
                        bp_aux[idx] = q
                    if a == start_nt and p == 0 and node_end[r]:
                        return 1, bp_rule, bp_aux, idx
                    stack.append(idx)
        for j in range(r_ptr[b], r_ptr[b + 1]):
            a = r_a[j]
            row = a * n + q
            bits = left[r_c[j] * n + p] & ~left[row]
            if bits:
                left[row] |= bits
                qbit = 1 << q
                while bits:
                    low = bits & -bits
                    bits ^= low
                    r = low.bit_length() - 1
                    right[a * n + r] |= qbit
                    idx = a * nn + r * n + q
                    if want_bp:
                        bp_rule[idx] = r_rule[j]
                        bp_aux[idx] = p
                    if a == start_nt and r == 0 and node_end[q]:
                        return 1, bp_rule, bp_aux, idx
                    stack.append(idx)
    return 0, bp_rule, bp_aux, -1


py_build_nfa = build_nfa

_NUMBA = None


def numba_available() -> bool:
    return _numba_kernels() is not None


def _numba_kernels():
    global _NUMBA
    if _NUMBA is None:
        try:
            import numba

            jit = numba.njit(cache=True, nogil=True)
            _NUMBA = (jit(build_nfa), jit(search), jit(search_counted))
        except Exception:  # numba missing or unusable: the fallback is exact, only slower
            _NUMBA = False
    return _NUMBA or None


def resolve_backend(backend: str | None = None) -> str:
    """``numba`` or ``python``: the argument, else ``$DLLM_GRAMMAR_BACKEND``, else numba when it imports."""
    choice = (backend or os.environ.get("DLLM_GRAMMAR_BACKEND") or "auto").lower()
    if choice not in ("auto", "numba", "python"):
        raise ValueError(f"grammar backend must be 'auto', 'numba' or 'python', not {choice!r}")
    if choice == "python":
        return "python"
    if numba_available():
        return "numba"
    if choice == "numba":
        raise ValueError("grammar backend 'numba' requested but numba does not import")
    return "python"


def py_search_counted(*args):
    """:func:`search_counted` run as plain Python on the same arrays. Its bit tricks (``bits & -bits``) wrap around on
    int64 words by design (a word's top bit is a node like any other); numba wraps silently, numpy scalars warn of an
    overflow, so the warning is switched off here and only here."""
    with np.errstate(over="ignore"):
        return search_counted(*args)


def kernels(backend: str):
    if backend == "numba":
        return _numba_kernels()
    return py_build_nfa, py_search, py_search_counted
