"""RFC 9162 §2.1 Merkle hash trees: hashes, incremental append, proofs and their verification.

Definitions (RFC 9162 §2.1.1), with ``D[n]`` the list of ``n`` leaf inputs:

- ``MTH({}) = SHA-256()``, ``MTH({d0}) = SHA-256(0x00 || d0)`` (``leaf_hash``);
- for ``n > 1``, with ``k`` the largest power of two *smaller than* ``n``:
  ``MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))`` (``node_hash``).

Node addressing used by the store: the node ``(level, index)`` is the root of the *complete*
subtree over leaves ``[index * 2**level, (index + 1) * 2**level)``; level 0 holds the leaf
hashes. Only complete subtrees are ever stored (they never change once the log has grown past
them); every other subtree hash (the ragged right edge) is computed from at most ``log2 n``
complete ones.

Contracts:

- ``Frontier.append`` costs O(log n) hashes and returns exactly the complete-subtree nodes the
  new leaf completes (the leaf itself first), so a store that saves them holds every complete
  subtree of the tree.
- ``inclusion_proof``/``consistency_proof`` take a ``NodeGetter`` for complete subtrees and
  read O(log n) nodes; ``needed_for_inclusion``/``needed_for_consistency`` list those nodes
  first, so a database can fetch them in one query.
- ``verify_inclusion``/``verify_consistency`` are the RFC 9162 §2.1.3.2 and §2.1.4.2
  algorithms; they return ``False`` (never raise) for any malformed or mismatching input,
  including hashes that are not 32 bytes long.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Final

HASH_SIZE: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
_LEAF: Final = b"\x00"
_NODE: Final = b"\x01"

#: ``get(level, index)`` → the stored hash of the complete subtree ``(level, index)``.
NodeGetter = Callable[[int, int], bytes]
NodeId = tuple[int, int]


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of one leaf input."""
    return hashlib.sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node."""
    return hashlib.sha256(_NODE + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    if n < 2:
        raise ValueError("split_point needs n >= 2")
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """``MTH`` of a list of *leaf hashes* by the recursive definition (reference; O(n))."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = split_point(n)
    return node_hash(root_of(leaf_hashes[:k]), root_of(leaf_hashes[k:]))


class Frontier:
    """The right frontier (compact range) of a tree: the roots of its maximal complete
    subtrees, largest first, one per set bit of ``size``. Appending is O(log n)."""

    __slots__ = ("hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != size.bit_count():
            raise ValueError(f"a tree of size {size} has {size.bit_count()} frontier nodes")
        self.size = size
        self.hashes = list(hashes)

    @staticmethod
    def node_ids(size: int) -> list[NodeId]:
        """The complete subtrees forming the frontier of a tree of ``size`` leaves."""
        return [
            (level, (size >> level) - 1)
            for level in range(size.bit_length() - 1, -1, -1)
            if size >> level & 1
        ]

    @classmethod
    def load(cls, size: int, get: NodeGetter) -> Frontier:
        return cls(size, [get(level, index) for level, index in cls.node_ids(size)])

    def copy(self) -> Frontier:
        return Frontier(self.size, self.hashes)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; returns the complete nodes it completes as
        ``(level, index, hash)``, the leaf ``(0, old size, leaf)`` first."""
        index, level, value = self.size, 0, leaf
        completed = [(0, index, leaf)]
        while index & 1:
            value = node_hash(self.hashes.pop(), value)
            index >>= 1
            level += 1
            completed.append((level, index, value))
        self.hashes.append(value)
        self.size += 1
        return completed

    def extend(self, leaves: Iterable[bytes]) -> list[tuple[int, int, bytes]]:
        out: list[tuple[int, int, bytes]] = []
        for leaf in leaves:
            out.extend(self.append(leaf))
        return out

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        value = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            value = node_hash(left, value)
        return value


def subtree_hash(start: int, end: int, get: NodeGetter) -> bytes:
    """``MTH(D[start:end])`` for a range that occurs in the RFC recursion (``start`` aligned to
    the largest power of two not above ``end - start``), from complete-subtree nodes."""
    n = end - start
    if n <= 0:
        raise ValueError("empty range")
    if n & (n - 1) == 0 and start % n == 0:
        level = n.bit_length() - 1
        return get(level, start >> level)
    k = split_point(n)
    return node_hash(subtree_hash(start, start + k, get), subtree_hash(start + k, end, get))


def inclusion_proof(index: int, size: int, get: NodeGetter) -> list[bytes]:
    """RFC 9162 §2.1.3.1 ``PATH(index, D[size])``: siblings bottom-up."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")

    def path(m: int, start: int, n: int) -> list[bytes]:
        if n == 1:
            return []
        k = split_point(n)
        if m < k:
            return [*path(m, start, k), subtree_hash(start + k, start + n, get)]
        return [*path(m - k, start + k, n - k), subtree_hash(start, start + k, get)]

    return path(index, 0, size)


def consistency_proof(old_size: int, new_size: int, get: NodeGetter) -> list[bytes]:
    """RFC 9162 §2.1.4.1 ``PROOF(old_size, D[new_size])``; empty when ``old_size`` is 0 or equal
    to ``new_size``."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []

    def subproof(m: int, start: int, n: int, complete: bool) -> list[bytes]:
        if m == n:
            return [] if complete else [subtree_hash(start, start + n, get)]
        k = split_point(n)
        if m <= k:
            return [*subproof(m, start, k, complete), subtree_hash(start + k, start + n, get)]
        return [*subproof(m - k, start + k, n - k, False), subtree_hash(start, start + k, get)]

    return subproof(old_size, 0, new_size, True)


def _needed(run: Callable[[NodeGetter], object]) -> list[NodeId]:
    seen: dict[NodeId, None] = {}

    def record(level: int, index: int) -> bytes:
        seen[(level, index)] = None
        return bytes(HASH_SIZE)

    run(record)
    return list(seen)


def needed_for_inclusion(index: int, size: int) -> list[NodeId]:
    """The complete-subtree nodes ``inclusion_proof(index, size, …)`` reads."""
    return _needed(lambda get: inclusion_proof(index, size, get))


def needed_for_consistency(old_size: int, new_size: int) -> list[NodeId]:
    """The complete-subtree nodes ``consistency_proof(old_size, new_size, …)`` reads."""
    return _needed(lambda get: consistency_proof(old_size, new_size, get))


def _hashes_ok(*values: bytes) -> bool:
    return all(isinstance(v, bytes | bytearray) and len(v) == HASH_SIZE for v in values)


def root_from_inclusion_proof(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes]
) -> bytes | None:
    """RFC 9162 §2.1.3.2 steps 1-5: the root the proof leads to, or ``None`` if malformed."""
    if not 0 <= index < size or not _hashes_ok(leaf, *proof):
        return None
    fn, sn, r = index, size - 1, bytes(leaf)
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """True iff ``proof`` shows the leaf hash ``leaf`` at ``index`` in the tree
    ``(size, root)``."""
    computed = root_from_inclusion_proof(index, size, leaf, proof)
    return computed is not None and _hashes_ok(root) and computed == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True iff ``proof`` shows the tree ``(new_size, new_root)`` extends
    ``(old_size, old_root)`` (RFC 9162 §2.1.4.2). Trivial cases: equal sizes need equal roots
    and an empty proof; ``old_size`` 0 needs an empty proof."""
    if not 0 <= old_size <= new_size or not _hashes_ok(old_root, new_root, *proof):
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


class MemoryTree:
    """Every complete node of a tree in a dict: for tests and for the offline verifier."""

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self.frontier = Frontier()
        self.nodes: dict[NodeId, bytes] = {}
        self.extend(leaves)

    @property
    def size(self) -> int:
        return self.frontier.size

    def extend(self, leaves: Iterable[bytes]) -> None:
        for level, index, value in self.frontier.extend(leaves):
            self.nodes[(level, index)] = value

    def get(self, level: int, index: int) -> bytes:
        return self.nodes[(level, index)]

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if size == 0:
            return EMPTY_ROOT
        return subtree_hash(0, size, self.get) if size <= self.size else _too_big(size)


def _too_big(size: int) -> bytes:
    raise ValueError(f"the tree has fewer than {size} leaves")
