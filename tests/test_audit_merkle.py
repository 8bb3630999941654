"""RFC 9162 Merkle trees: reference vectors, property tests, and mutated proofs that must fail."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.audit.log import merkle
from custos.audit.log.merkle import (
    EMPTY_ROOT,
    Frontier,
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    needed_for_consistency,
    needed_for_inclusion,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# Reference vectors: data copied from transparency-dev/merkle (Apache-2.0),
# testonly/constants.go (LeafInputs, NodeHashes, RootHashes) and proof/verify_test.go
# (inclusionProofs, consistencyProofs). Inclusion vectors there count leaves from 1; they are
# converted to 0-based indices here.
LEAF_INPUTS = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
NODE_HASHES = [
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]
ROOT_HASHES = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION_VECTORS = [  # (0-based index, size, proof)
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
CONSISTENCY_VECTORS = [  # (size1, size2, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def _h(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


REF_LEAVES = [merkle.leaf_hash(d) for d in LEAF_INPUTS]
REF_TREE = MemoryTree(REF_LEAVES)


def test_empty_root_and_leaf_hashes() -> None:
    assert EMPTY_ROOT.hex() == ROOT_HASHES[0]
    assert [h.hex() for h in REF_LEAVES] == NODE_HASHES[0]
    # The audit record module hashes leaves the same way.
    from custos.audit.records.record import leaf_hash

    assert [leaf_hash(d) for d in LEAF_INPUTS] == REF_LEAVES


def test_roots_by_recursion_and_by_incremental_append_match_the_vectors() -> None:
    frontier = Frontier()
    for size in range(len(LEAF_INPUTS) + 1):
        assert root_of(REF_LEAVES[:size]).hex() == ROOT_HASHES[size]
        assert frontier.root().hex() == ROOT_HASHES[size]
        assert REF_TREE.root(size).hex() == ROOT_HASHES[size]
        if size < len(LEAF_INPUTS):
            frontier.append(REF_LEAVES[size])


def test_every_complete_node_matches_the_vectors() -> None:
    expected = {
        (level, index): bytes.fromhex(value)
        for level, row in enumerate(NODE_HASHES)
        for index, value in enumerate(row)
    }
    assert REF_TREE.nodes == expected


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_inclusion_vectors(index: int, size: int, proof: list[str]) -> None:
    root = bytes.fromhex(ROOT_HASHES[size])
    assert inclusion_proof(index, size, REF_TREE.get) == _h(proof)
    assert verify_inclusion(index, size, REF_LEAVES[index], _h(proof), root)
    for bad in _mutated_inclusion(index, size, REF_LEAVES[index], _h(proof), root):
        assert not verify_inclusion(*bad)


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY_VECTORS)
def test_consistency_vectors(size1: int, size2: int, proof: list[str]) -> None:
    root1, root2 = bytes.fromhex(ROOT_HASHES[size1]), bytes.fromhex(ROOT_HASHES[size2])
    assert consistency_proof(size1, size2, REF_TREE.get) == _h(proof)
    assert verify_consistency(size1, size2, root1, root2, _h(proof))
    if proof:
        for bad in _mutated_consistency(size1, size2, root1, root2, _h(proof)):
            assert not verify_consistency(*bad), bad


def test_trivial_consistency_cases() -> None:
    a, b = SOME_HASH, EMPTY_ROOT
    assert verify_consistency(0, 0, a, a, [])
    assert verify_consistency(0, 5, a, b, [])
    assert verify_consistency(3, 3, a, a, [])
    assert not verify_consistency(3, 3, a, b, [])
    assert not verify_consistency(0, 0, a, a, [b])
    assert not verify_consistency(3, 3, a, a, [b])
    assert not verify_consistency(2, 1, a, b, [])
    assert not verify_consistency(1, 2, a, b, [])


def test_single_leaf_inclusion() -> None:
    leaf = merkle.leaf_hash(b"data")
    assert verify_inclusion(0, 1, leaf, [], leaf)
    assert not verify_inclusion(0, 1, leaf, [], b"")
    assert not verify_inclusion(0, 1, b"", [], leaf)
    for index, size in ((0, 0), (1, 0), (2, 1), (1, 1)):
        assert not verify_inclusion(index, size, SOME_HASH, [], EMPTY_ROOT)


def _mutated_inclusion(
    index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes
) -> list[tuple[int, int, bytes, list[bytes], bytes]]:
    out = [
        (index - 1, size, leaf, proof, root),
        (index + 1, size, leaf, proof, root),
        (index ^ 2, size, leaf, proof, root),
        (index, size * 2, leaf, proof, root),
        (index, size // 2, leaf, proof, root),
        (index, size + 1, leaf, proof, root),
        (index, size, b"WrongLeaf", proof, root),
        (index, size, SOME_HASH, proof, root),
        (index, size, leaf, proof, EMPTY_ROOT),
        (index, size, leaf, proof, SOME_HASH),
        (index, size, leaf, [*proof, b""], root),
        (index, size, leaf, [*proof, root], root),
        (index, size, leaf, [b"", *proof], root),
        (index, size, leaf, [root, *proof], root),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        out.append((index, size, leaf, flipped, root))
    if proof:
        out.append((index, size, leaf, proof[:-1], root))
    if len(proof) > 1:
        out.append((index, size, leaf, [proof[0], SOME_HASH, *proof[1:]], root))
        out.append((index, size, leaf, [proof[1], proof[0], *proof[2:]], root))
    # A wrong index or size that walks the same left/right path is not detectable from the
    # proof alone (the verifier trusts the signed size); such probes are skipped.
    return [
        b
        for b in out
        if (b[0], b[1]) == (index, size)
        or not (0 <= b[0] < b[1] and _directions(b[0], b[1]) == _directions(index, size))
    ]


def _mutated_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> list[tuple[int, int, bytes, bytes, list[bytes]]]:
    out = [
        (size1 - 1, size2, root1, root2, proof),
        (size1 + 1, size2, root1, root2, proof),
        (size1 ^ 2, size2, root1, root2, proof),
        (size1, size2 * 2, root1, root2, proof),
        (size1, size2 // 2, root1, root2, proof),
        (size1, size2 + 1, root1, root2, proof),
        (size1, size2, b"WrongRoot", root2, proof),
        (size1, size2, root1, b"WrongRoot", proof),
        (size1, size2, SOME_HASH, root2, proof),
        (size1, size2, root1, SOME_HASH, proof),
        (size1, size2, root2, root1, proof),
        (size1, size2, root1, root2, []),
        (size1, size2, root1, root2, [*proof, b""]),
        (size1, size2, root1, root2, [*proof, root1]),
        (size1, size2, root1, root2, [*proof, root2]),
        (size1, size2, root1, root2, [b"", *proof]),
        (size1, size2, root1, root2, [root1, *proof]),
        (size1, size2, root1, root2, [root2, *proof]),
        (size1, size2, root1, root2, [proof[0], *proof]),
        (size1, size2, root1, root2, proof[:-1]),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        out.append((size1, size2, root1, root2, flipped))
    # A changed size that walks the same path as the real one is not detectable from the
    # proof alone (the verifier trusts the signed sizes); such probes are skipped.
    walk = _consistency_walk(size1, size2)
    return [
        b
        for b in out
        if b[:2] == (size1, size2) or not (0 < b[0] < b[1]) or _consistency_walk(*b[:2]) != walk
    ]


def _consistency_walk(old: int, new: int) -> tuple[bool, list[int]]:
    """The branch sequence the RFC 9162 consistency verifier takes for ``(old, new)``."""
    fn, sn, out = old - 1, new - 1, []
    while fn & 1:
        fn >>= 1
        sn >>= 1
    while sn:
        if fn & 1 or fn == sn:
            out.append(1)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            out.append(0)
        fn >>= 1
        sn >>= 1
    return old & (old - 1) == 0, out


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


BIG = MemoryTree(_leaves(2000))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_inclusion_property(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, 2000))
    index = data.draw(st.integers(0, size - 1))
    root = BIG.root(size)
    proof = inclusion_proof(index, size, BIG.get)
    leaf = BIG.get(0, index)
    assert verify_inclusion(index, size, leaf, proof, root)
    assert len(needed_for_inclusion(index, size)) <= 2 * size.bit_length()
    for bad in _mutated_inclusion(index, size, leaf, proof, root):
        assert not verify_inclusion(*bad), bad


def _directions(index: int, size: int) -> list[bool]:
    """The sibling sides the RFC 9162 verifier walks for ``(index, size)``."""
    fn, sn, out = index, size - 1, []
    while sn:
        if fn & 1 or fn == sn:
            out.append(True)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            out.append(False)
        fn >>= 1
        sn >>= 1
    return out


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_consistency_property(data: st.DataObject) -> None:
    new = data.draw(st.integers(1, 2000))
    old = data.draw(st.integers(1, new))
    root1, root2 = BIG.root(old), BIG.root(new)
    proof = consistency_proof(old, new, BIG.get)
    assert verify_consistency(old, new, root1, root2, proof)
    assert len(needed_for_consistency(old, new)) <= 2 * new.bit_length() + 2
    if old != new:
        for bad in _mutated_consistency(old, new, root1, root2, proof):
            assert not verify_consistency(*bad), bad
    # A proof never links trees built from different leaves.
    other = MemoryTree([*_leaves(old - 1), hashlib.sha256(b"x").digest()])
    if old < new:
        assert not verify_consistency(old, new, other.root(old), root2, proof)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2000))
def test_frontier_matches_the_recursive_definition(size: int) -> None:
    frontier = Frontier.load(size, BIG.get)
    assert frontier.root() == root_of(BIG_LEAVES[:size])
    assert len(frontier.node_ids(size)) == size.bit_count()
    completed = frontier.copy().extend(BIG_LEAVES[size : size + 3])
    assert all(BIG.nodes[(lvl, idx)] == value for lvl, idx, value in completed)


BIG_LEAVES = [BIG.get(0, i) for i in range(2000)]
