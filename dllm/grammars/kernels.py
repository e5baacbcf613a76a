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
* the end of the output is anchored (the last lexeme must be complete) when an EOS follows a committed
  cell, or — with ``open_end=False``, the oracle's default — when the canvas simply ends after a committed
  cell; with ``open_end=True`` (the reference's behaviour) a canvas without EOS has an open trailing gap.

NFA: the canvas becomes a DAG of byte edges whose nodes are numbered in topological order: one node per
byte boundary of committed text, one node per (cell, automaton state) of an unrolled run (edges carry one
representative byte per class, which the lexer cannot tell apart from the others), and a loose gap marks
its node as a *gap node* with an implicit self-loop on every terminal. A sweep in node order keeps every
lexeme in progress as (origin node, global DFA state) and pushes it along every byte edge; at a loose gap
each one is widened to its closure R_T, and lexemes may start inside it (closure of the start state). A
lexeme reaching an accepting state at node w emits the edge (origin, T, w). Edges therefore always go
forward (I1) and gap nodes carry no explicit self-loop (I2). Only nodes where a lexeme ended (or node 0)
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

def _helper(fn):
    """Compile a function the kernels call (numba compiles a kernel only if every global it calls is compiled);
    without numba it stays plain Python, like the kernels' fallback."""
    try:
        import numba

        return numba.njit(cache=True, nogil=True)(fn)
    except Exception:  # pragma: no cover - numba missing
        return fn


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
def _unrolled(j, k, L, open_end, max_cells, focus_lo, focus_hi, split_at):
    """Is the run of masks j..k-1 laid out cell by cell (else: one loose gap)?"""
    if j == split_at:
        return True
    return k - j <= max_cells and not (k == L and open_end) and j <= focus_hi and k > focus_lo


MASK = -1
EOS = -2


def build_nfa(cells, tok_off, tok_data, open_end, g_step, g_acc, g_term, g_start, clo_ptr, clo_idx,
              c_step, c_final, c_live, c_byte, max_cells, focus_lo, focus_hi, split_at):
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
                    empty_i, empty_i, empty_b, empty_b, empty_i)
    # ---- the canvas as a DAG of byte edges: count, then lay out
    cell_edges = 0
    for a in range(n_cs):
        for c in range(n_cls):
            t = c_step[a * n_cls + c]
            if t >= 0:
                cell_edges += np.int64(c_live[t]) + np.int64(c_final[t])
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
            if _unrolled(j, k, L, open_end, max_cells, focus_lo, focus_hi, split_at):
                N += (k - j) * n_cs
                M += (k - j) * cell_edges
            j = k
    d_src = np.empty(M, dtype=np.int32)
    d_dst = np.empty(M, dtype=np.int32)
    d_byte = np.empty(M, dtype=np.uint8)
    d_cell = np.full(M, -1, dtype=np.int32)
    d_gap = np.zeros(N, dtype=np.uint8)
    is_end = np.zeros(N, dtype=np.uint8)
    u = 0
    m = 0
    j = 0
    while j < e:
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
        if _unrolled(j, k, L, open_end, max_cells, focus_lo, focus_hi, split_at):
            # one copy of the cell automaton per cell: node J_i + a is state a of cell i (a = 0: junction)
            for i in range(k - j):
                if k == e:
                    is_end[u] = 1  # masks before an end of output may all be EOS
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
    if e == L and open_end:
        d_gap[u] = 1
    is_end[u] = 1
    d_ptr = np.zeros(N + 1, dtype=np.int32)
    for k in range(M):
        d_ptr[d_src[k] + 1] += 1
    for v in range(N):
        d_ptr[v + 1] += d_ptr[v]
    # ---- sweep in node order, keeping every lexeme in progress as (origin node, global DFA state)
    stamp = np.zeros(n_gs * N, dtype=np.int32)
    estamp = np.zeros(n_terms * N, dtype=np.int32)
    reach = np.zeros(N, dtype=np.uint8)
    reach[0] = 1
    head = np.full(N, -1, dtype=np.int32)
    p_next = np.empty(256, dtype=np.int32)
    p_o = np.empty(256, dtype=np.int32)
    p_s = np.empty(256, dtype=np.int32)
    npend = 0
    act_o = np.empty(64, dtype=np.int32)
    act_s = np.empty(64, dtype=np.int32)
    nxt_o = np.empty(64, dtype=np.int32)
    nxt_s = np.empty(64, dtype=np.int32)
    es = np.empty(256, dtype=np.int32)
    et = np.empty(256, dtype=np.int32)
    ed = np.empty(256, dtype=np.int32)
    ne = 0
    tick = 0
    for u in range(N):
        tick += 1
        na = 0
        k = head[u]
        while k >= 0:
            key = p_s[k] * N + p_o[k]
            if stamp[key] != tick:
                stamp[key] = tick
                if na == act_o.shape[0]:
                    act_o, act_s = _grown(act_o, na), _grown(act_s, na)
                act_o[na] = p_o[k]
                act_s[na] = p_s[k]
                na += 1
            k = p_next[k]
        if d_gap[u]:
            tick += 1
            nb = 0
            for k in range(na):
                o = act_o[k]
                s = act_s[k]
                for ci in range(clo_ptr[s], clo_ptr[s + 1]):
                    s2 = clo_idx[ci]
                    key = s2 * N + o
                    if stamp[key] != tick:
                        stamp[key] = tick
                        if nb == nxt_o.shape[0]:
                            nxt_o, nxt_s = _grown(nxt_o, nb), _grown(nxt_s, nb)
                        nxt_o[nb] = o
                        nxt_s[nb] = s2
                        nb += 1
            act_o, nxt_o = nxt_o, act_o
            act_s, nxt_s = nxt_s, act_s
            na = nb
        # lexemes completing at node u
        for k in range(na):
            s = act_s[k]
            o = act_o[k]
            if g_acc[s] and o != u:
                t = g_term[s]
                key = t * N + o
                if estamp[key] != u + 1:
                    estamp[key] = u + 1
                    if ne == es.shape[0]:
                        es, et, ed = _grown(es, ne), _grown(et, ne), _grown(ed, ne)
                    es[ne] = o
                    et[ne] = t
                    ed[ne] = u
                    ne += 1
                    reach[u] = 1
        # lexemes starting at node u (inside the gap when u is a loose gap)
        if reach[u]:
            for t in range(n_terms):
                s0 = g_start[t]
                lo = clo_ptr[s0] if d_gap[u] else 0
                hi = clo_ptr[s0 + 1] if d_gap[u] else 1
                for ci in range(lo, hi):
                    s2 = clo_idx[ci] if d_gap[u] else s0
                    if na == act_o.shape[0]:
                        act_o, act_s = _grown(act_o, na), _grown(act_s, na)
                    act_o[na] = u
                    act_s[na] = s2
                    na += 1
        # every lexeme in progress follows every byte edge leaving u
        for ei in range(d_ptr[u], d_ptr[u + 1]):
            v = d_dst[ei]
            b = d_byte[ei]
            for k in range(na):
                s2 = g_step[act_s[k] * 256 + b]
                if s2 >= 0:
                    if npend == p_o.shape[0]:
                        p_next, p_o, p_s = _grown(p_next, npend), _grown(p_o, npend), _grown(p_s, npend)
                    p_o[npend] = act_o[k]
                    p_s[npend] = s2
                    p_next[npend] = head[v]
                    head[v] = npend
                    npend += 1
    # ---- keep the nodes that are reached from node 0 and reach an end of output
    co = np.zeros(N, dtype=np.uint8)
    for v in range(N):
        if is_end[v] and reach[v]:
            co[v] = 1
    for k in range(ne - 1, -1, -1):
        if co[ed[k]]:
            co[es[k]] = 1
    if not co[0]:
        return (0, 0, empty_i, empty_b, empty_i, empty_i, empty_i, empty_b,
                d_ptr, d_dst, d_byte, d_gap, d_cell)
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
    for k in range(ne):
        if co[ed[k]]:
            kept += 1
    ks = np.empty(kept, dtype=np.int32)
    kt = np.empty(kept, dtype=np.int32)
    kd = np.empty(kept, dtype=np.int32)
    i = 0
    for k in range(ne):
        if co[ed[k]]:
            ks[i] = newid[es[k]]
            kt[i] = et[k]
            kd[i] = newid[ed[k]]
            i += 1
    return 1, n, node_orig, node_gap, ks, kt, kd, node_end, d_ptr, d_dst, d_byte, d_gap, d_cell


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
    stack = np.empty(1024, dtype=np.int64)
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
                if sp == stack.shape[0]:
                    stack = _grown(stack, sp)
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
                if sp == stack.shape[0]:
                    stack = _grown(stack, sp)
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
                    if sp == stack.shape[0]:
                        stack = _grown(stack, sp)
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
                    if sp == stack.shape[0]:
                        stack = _grown(stack, sp)
                    stack[sp] = idx
                    sp += 1
    return 0, bp_rule, bp_aux, -1


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
            _NUMBA = (jit(build_nfa), jit(search))
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


def kernels(backend: str):
    if backend == "numba":
        return _numba_kernels()
    return py_build_nfa, py_search
