"""A Drain3 miner's state as plain data: its clusters and its prefix tree, nothing that runs.

The state file sits in the user's data folder, so it is read as JSON into ints, strings and
lists, checked field by field, and only then rebuilt into Drain3's own objects. A file in the
older format (a ``jsonpickle`` payload, which would build any object it names) is read the same
way: as JSON, accepting only the four Drain3 classes it legitimately holds; any other marker
(``py/reduce``, ``py/function``, an unknown class) is refused, naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logfit_dagster.core.errors import StateFileError

STATE_FORMAT = "logfit-drain-state"
STATE_VERSION = 2
# Drain's tree is token count, then at most depth-2 token levels: far shallower than this.
MAX_TREE_DEPTH = 64

_REMEDY = "delete it to mine the source anew (its template ids are then renumbered)"


@dataclass
class TreeNode:
    """A node of Drain's prefix tree: the clusters at a leaf, children by token."""

    cluster_ids: list[int] = field(default_factory=list)
    children: dict[str, TreeNode] = field(default_factory=dict)


@dataclass
class MinerState:
    """What a Drain3 miner needs to continue: clusters, their counter and the prefix tree.

    Attributes:
        profile: the fingerprint of the parser profile that made the clusters.
        clusters_counter: the last cluster id handed out.
        clusters: ``(cluster id, size, template tokens)`` of every cluster.
        tree: the root of the prefix tree.
    """

    profile: str
    clusters_counter: int
    clusters: list[tuple[int, int, list[str]]]
    tree: TreeNode

    @classmethod
    def of(cls, drain: Any, profile: str) -> MinerState:
        """The state of a live ``drain3.drain.Drain``."""

        def node(n: Any) -> TreeNode:
            return TreeNode(
                [int(c) for c in n.cluster_ids],
                {str(k): node(child) for k, child in n.key_to_child_node.items()},
            )

        clusters = [
            (int(c.cluster_id), int(c.size), list(c.log_template_tokens))
            for c in drain.id_to_cluster.values()
            if c is not None
        ]
        return cls(profile, int(drain.clusters_counter), clusters, node(drain.root_node))

    def restore(self, drain: Any) -> None:
        """Rebuild Drain3's objects from the state into ``drain``."""
        from drain3.drain import LogCluster, Node

        def node(n: TreeNode) -> Node:
            built = Node()
            built.cluster_ids = list(n.cluster_ids)
            built.key_to_child_node = {k: node(child) for k, child in n.children.items()}
            return built

        by_id = {}
        for cluster_id, size, tokens in self.clusters:
            cluster = LogCluster(tokens, cluster_id)
            cluster.size = size
            by_id[cluster_id] = cluster
        drain.id_to_cluster = by_id
        drain.clusters_counter = self.clusters_counter
        drain.root_node = node(self.tree)

    def to_json(self) -> dict:
        def node(n: TreeNode) -> dict:
            return {
                "clusters": n.cluster_ids,
                "children": {k: node(c) for k, c in n.children.items()},
            }

        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "profile": self.profile,
            "clusters_counter": self.clusters_counter,
            "clusters": [[cid, size, tokens] for cid, size, tokens in self.clusters],
            "tree": node(self.tree),
        }


def read_miner_state(path: Path) -> MinerState:
    """Read and check a miner state file (this format, or the older jsonpickle one as data).

    Raises:
        StateFileError: naming the file and the field when it is not a miner state.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise StateFileError(f"{path}: not a miner state (not JSON: {exc}); {_REMEDY}") from None
    except OSError as exc:
        raise StateFileError(f"{path}: cannot read the miner state: {exc}") from None
    check = _Checker(path)
    if not isinstance(document, dict):
        check.fail("", "the file must hold an object")
    if set(document) == {"profile", "drain"}:
        return _legacy(document, check)
    check.keys(
        "", document, {"format", "version", "profile", "clusters_counter", "clusters", "tree"}
    )
    if document["format"] != STATE_FORMAT:
        check.fail("format", f"expected {STATE_FORMAT!r}, got {document['format']!r}")
    if document["version"] != STATE_VERSION:
        check.fail(
            "version", f"this logfit reads version {STATE_VERSION}, got {document['version']!r}"
        )
    clusters = []
    for i, entry in enumerate(check.list_of("clusters", document["clusters"])):
        where = f"clusters[{i}]"
        if not isinstance(entry, list) or len(entry) != 3:
            check.fail(where, "expected [cluster id, size, tokens]")
        cluster_id, size, tokens = entry
        clusters.append(
            (check.whole(where, cluster_id), check.whole(where, size), check.strings(where, tokens))
        )
    tree = _node(document["tree"], "tree", check, 0)
    return check.consistent(
        MinerState(
            check.string("profile", document["profile"]),
            check.whole("clusters_counter", document["clusters_counter"]),
            clusters,
            tree,
        )
    )


def _node(value: Any, where: str, check: _Checker, depth: int) -> TreeNode:
    if depth > MAX_TREE_DEPTH:
        check.fail(where, f"the tree is deeper than {MAX_TREE_DEPTH} levels")
    check.keys(where, value, {"clusters", "children"})
    children = value["children"]
    if not isinstance(children, dict):
        check.fail(f"{where}.children", "expected an object")
    return TreeNode(
        [
            check.whole(f"{where}.clusters", c)
            for c in check.list_of(f"{where}.clusters", value["clusters"])
        ],
        {k: _node(c, f"{where}.children[{k!r}]", check, depth + 1) for k, c in children.items()},
    )


# The only objects a Drain3 miner pickled by jsonpickle legitimately holds.
_LEGACY_CLASSES = {
    "drain3.drain.Drain",
    "drain3.drain.Node",
    "drain3.drain.LogCluster",
    "drain3.simple_profiler.NullProfiler",
}
_LEGACY_MARKERS = {"py/object", "py/tuple"}


def _legacy(document: dict, check: _Checker) -> MinerState:
    """The older jsonpickle format, read as JSON data only: nothing in it is instantiated."""
    payload = document["drain"]
    if not isinstance(payload, str):
        check.fail("drain", "expected the miner's JSON as a string")
    try:
        drain = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        check.fail("drain", f"not JSON: {exc}")
    _refuse_code(drain, "drain", check)
    _expect_class(drain, "drain", "drain3.drain.Drain", check)

    def untuple(value: Any, where: str) -> list:
        if isinstance(value, dict) and set(value) == {"py/tuple"}:
            value = value["py/tuple"]
        return check.list_of(where, value)

    def node(value: Any, where: str, depth: int) -> TreeNode:
        if depth > MAX_TREE_DEPTH:
            check.fail(where, f"the tree is deeper than {MAX_TREE_DEPTH} levels")
        _expect_class(value, where, "drain3.drain.Node", check)
        children = value.get("key_to_child_node")
        if not isinstance(children, dict):
            check.fail(f"{where}.key_to_child_node", "expected an object")
        ids = untuple(value.get("cluster_ids"), f"{where}.cluster_ids")
        return TreeNode(
            [check.whole(f"{where}.cluster_ids", c) for c in ids],
            {
                k: node(c, f"{where}.key_to_child_node[{k!r}]", depth + 1)
                for k, c in children.items()
            },
        )

    clusters = []
    id_to_cluster = drain.get("id_to_cluster")
    if not isinstance(id_to_cluster, dict):
        check.fail("drain.id_to_cluster", "expected an object")
    for key, value in id_to_cluster.items():
        where = f"drain.id_to_cluster[{key!r}]"
        _expect_class(value, where, "drain3.drain.LogCluster", check)
        tokens = check.strings(where, untuple(value.get("log_template_tokens"), where))
        clusters.append(
            (
                check.whole(where, value.get("cluster_id")),
                check.whole(where, value.get("size")),
                tokens,
            )
        )
    return check.consistent(
        MinerState(
            check.string("profile", document["profile"]),
            check.whole("drain.clusters_counter", drain.get("clusters_counter")),
            clusters,
            node(drain.get("root_node"), "drain.root_node", 0),
        )
    )


def _refuse_code(value: Any, where: str, check: _Checker) -> None:
    """Refuse every jsonpickle marker but a tuple and the four Drain3 classes."""
    stack = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and key.startswith("py/"):
                    if key not in _LEGACY_MARKERS:
                        check.fail(at, f"holds {key!r}, which would run code when loaded: refused")
                    if key == "py/object" and child not in _LEGACY_CLASSES:
                        check.fail(at, f"names class {child!r}, not a Drain3 miner's: refused")
                stack.append((child, f"{at}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{at}[{i}]") for i, child in enumerate(item))


def _expect_class(value: Any, where: str, name: str, check: _Checker) -> None:
    if not isinstance(value, dict) or value.get("py/object") != name:
        check.fail(where, f"expected a {name}")


class _Checker:
    """Field checks that raise ``StateFileError`` naming the file and the field."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, message: str):
        at = f": {where}" if where else ""
        raise StateFileError(f"{self.path}{at}: {message}; {_REMEDY}")

    def keys(self, where: str, value: Any, expected: set[str]) -> None:
        if not isinstance(value, dict):
            self.fail(where, "expected an object")
        unknown, missing = set(value) - expected, expected - set(value)
        if unknown:
            self.fail(where, f"unknown field(s) {sorted(unknown)}")
        if missing:
            self.fail(where, f"missing field(s) {sorted(missing)}")

    def whole(self, where: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            self.fail(where, f"expected a whole number, got {value!r}")
        return value

    def string(self, where: str, value: Any) -> str:
        if not isinstance(value, str):
            self.fail(where, f"expected a string, got {value!r}")
        return value

    def list_of(self, where: str, value: Any) -> list:
        if not isinstance(value, list):
            self.fail(where, "expected a list")
        return value

    def strings(self, where: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            self.fail(where, "expected a list of strings (the template's tokens)")
        return list(value)

    def consistent(self, state: MinerState) -> MinerState:
        """Every cluster the tree names exists, and no id is past the counter."""
        ids = {cid for cid, _, _ in state.clusters}
        if len(ids) != len(state.clusters):
            self.fail("clusters", "a cluster id appears twice")
        if ids and max(ids) > state.clusters_counter:
            self.fail("clusters_counter", "lower than a cluster's id")
        stack = [state.tree]
        while stack:
            node = stack.pop()
            missing = set(node.cluster_ids) - ids
            if missing:
                self.fail("tree", f"names cluster(s) {sorted(missing)} that are not in clusters")
            stack.extend(node.children.values())
        return state
