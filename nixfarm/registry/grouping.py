"""Grouping the store paths of an image's closure into layers, Nixery's way.

Why: a registry client downloads a layer only when it lacks a blob of that digest. If
the store paths that many images share (glibc, openssl, a shell) land in the same
layers whatever image they are part of, pulling a second image costs only what is new
in it. Docker-style runtimes also limit an image to a little over a hundred layers, so
paths must be grouped, and the grouping must be stable when an image changes a little.

Inputs
    graph        store path -> its references (the closure's runtime graph, as
                 ``nix-store --query --graph``/``exportReferencesGraph`` give it;
                 self-references are ignored). Every reference must be a key.
    roots        the store paths the image asked for (its packages).
    sizes        store path -> its size in bytes (the NAR size).
    popularity   how many packages of the package set depend on a package (Nixery's
                 "popcount": direct references, counted over the whole set). Keys are
                 a full store path, a store path's name (``busybox-1.36.1``, what follows
                 the hash) or a package name without version (``busybox``), looked up
                 in that order; a path found under none has popularity 1.
                 :func:`popularity_from_graph` computes it from a package set's graph.
    budget       the most layers the image may have (default 94: 127, docker's limit,
                 less room for the customisation layer and for images built on top).

Algorithm
    1. Build the dependency graph of the closure under a synthetic root that points
       at each requested path. A path that is *big* (over 100 MB) or *popular*
       (popularity >= 100) also gets an edge from the root, and so do its direct
       references: that keeps it alone in its own group, whatever depends on it.

    2. Compute the dominator tree (Cooper, Harvey & Kennedy's iterative algorithm):
       X dominates Y when every path from the root to Y goes through X. Everything Y
       is needed for only by X then sits in X's subtree. In this example E is popular
       and G is big:

           root ──> A ───────┐                    root
             │               v                      ├── A
             ├────> B ─────> E     dominators       ├── B
             │               ^     ══════════>      ├── C
             ├────> C ───────┘                      ├── E
             │      │                               ├── D ── F
             │      v                               └── G
             └────> D ──> F ──> G

    3. Each subtree under the root is one candidate layer: ``{A} {B} {C} {E} {D,F}
       {G}``. Its merge rating is its top path's popularity times the group's size:
       how much is lost if the group stops being a layer of its own.

    4. While there are more groups than the budget allows, the groups with the lowest
       ratings are merged into one layer; big and popular groups are merged only when
       nothing else is left. With a budget of 4 above, and {D,F} outweighing A, B
       and C: ``{E} {G} {D,F} {A,B,C}``.

    Adding a package to an image only changes the groups whose paths the new package
    now also reaches (they move up to the root); every other group, and so its layer
    digest, stays the same. Paths are sorted, and ties are broken by the group hash,
    so the same inputs always give the same layers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nixfarm.errors import InvalidInput

DEFAULT_BUDGET = 94
BIG_PATH_BYTES = 100_000_000
POPULAR_THRESHOLD = 100

_ROOT = ""  # never a store path, so it cannot collide with one
_STORE_NAME = re.compile(r"^(?:.*/)?[0-9a-z]{32}-(?P<name>.+)$")
# Nix's parseDrvName: the version starts at the first '-' not followed by a letter.
_VERSION = re.compile(r"-(?![A-Za-z])")


@dataclass(frozen=True)
class Layer:
    """A group of store paths shipped as one image layer."""

    paths: tuple[str, ...]
    merge_rating: int

    def hash(self) -> str:
        """The layer's cache key: sha256 of its sorted, newline-joined paths."""
        return hashlib.sha256("\n".join(self.paths).encode()).hexdigest()


def package_names(store_path: str) -> tuple[str, str]:
    """The store path's name and its package name: ``(busybox-1.36.1, busybox)``."""
    match = _STORE_NAME.match(store_path)
    name = match["name"] if match else store_path.rsplit("/", 1)[-1]
    return name, _VERSION.split(name, maxsplit=1)[0]


def popularity_from_graph(graph: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Popularity keyed by store path name: how many other paths reference each one."""
    counts: dict[str, int] = {}
    for path, references in graph.items():
        for reference in set(references) - {path}:
            name = package_names(reference)[0]
            counts[name] = counts.get(name, 0) + 1
    return counts


def _popularity_of(path: str, popularity: Mapping[str, int]) -> int:
    if path in popularity:
        return popularity[path]
    for key in package_names(path):
        if key in popularity:
            return popularity[key]
    return 1


def _closure(graph: Mapping[str, Sequence[str]], roots: Sequence[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        path = stack.pop()
        if path in seen:
            continue
        if path not in graph:
            raise InvalidInput(f"{path} is not in the closure graph.", "graph")
        seen.add(path)
        stack.extend(graph[path])
    return seen


def immediate_dominators(successors: Mapping[str, Sequence[str]], start: str) -> dict[str, str]:
    """Each node's immediate dominator (``start`` maps to itself).

    Cooper, Harvey & Kennedy, "A Simple, Fast Dominance Algorithm" (2001): number the
    nodes in postorder, then repeatedly set each node's dominator to the common
    ancestor of its processed predecessors until nothing changes.
    """
    postorder: list[str] = []
    visited = {start}
    stack = [(start, iter(successors[start]))]
    while stack:
        node, children = stack[-1]
        for child in children:
            if child not in visited:
                visited.add(child)
                stack.append((child, iter(successors[child])))
                break
        else:
            stack.pop()
            postorder.append(node)
    number = {node: i for i, node in enumerate(postorder)}
    predecessors: dict[str, list[str]] = {node: [] for node in postorder}
    for node in postorder:
        for child in successors[node]:
            predecessors[child].append(node)

    idom = {start: start}

    def intersect(a: str, b: str) -> str:
        while a != b:
            while number[a] < number[b]:
                a = idom[a]
            while number[b] < number[a]:
                b = idom[b]
        return a

    order = postorder[-2::-1]  # reverse postorder without the start node
    changed = True
    while changed:
        changed = False
        for node in order:
            new = ""
            for pred in predecessors[node]:
                if pred in idom:
                    new = pred if not new else intersect(pred, new)
            if idom.get(node) != new:
                idom[node] = new
                changed = True
    return idom


def group_layers(
    graph: Mapping[str, Sequence[str]],
    roots: Sequence[str],
    sizes: Mapping[str, int],
    popularity: Mapping[str, int],
    *,
    budget: int = DEFAULT_BUDGET,
    big_path_bytes: int = BIG_PATH_BYTES,
    popular_threshold: int = POPULAR_THRESHOLD,
) -> list[Layer]:
    """Group the closure of ``roots`` into at most ``budget`` layers (see module doc).

    Layers come most valuable first (highest merge rating), which is also the order to
    stack them in the image: the layers most likely to be shared sit at the bottom.
    """
    if budget < 1:
        raise InvalidInput(f"A layer budget of {budget} leaves no room for layers.", "budget")
    closure = _closure(graph, roots)
    missing = sorted(closure - sizes.keys())
    if missing:
        raise InvalidInput(f"No size is known for {missing[0]}.", "sizes")

    special = {
        path
        for path in closure
        if sizes[path] > big_path_bytes or _popularity_of(path, popularity) >= popular_threshold
    }
    # Sorted successor lists make the DFS, and so every tie below, reproducible.
    successors: dict[str, list[str]] = {path: sorted(set(graph[path]) - {path}) for path in closure}
    top = set(roots) | special
    for path in special:
        top.update(successors[path])
    successors[_ROOT] = sorted(top)

    idom = immediate_dominators(successors, _ROOT)
    children: dict[str, list[str]] = {}
    for node, parent in idom.items():
        if node != _ROOT:
            children.setdefault(parent, []).append(node)

    groups: list[tuple[bool, int, str, Layer]] = []
    for head in children.get(_ROOT, []):
        members = [head]
        for member in members:  # grows while walking: a breadth-first subtree walk
            members.extend(children.get(member, ()))
        rating = _popularity_of(head, popularity) * sum(sizes[m] for m in members)
        layer = Layer(tuple(sorted(members)), rating)
        groups.append((head in special, rating, layer.hash(), layer))
    groups.sort(key=lambda group: group[:3])

    excess = len(groups) - budget
    if excess > 0:
        merged = [group[3] for group in groups[: excess + 1]]
        layer = Layer(
            tuple(sorted(p for m in merged for p in m.paths)),
            sum(m.merge_rating for m in merged),
        )
        groups = [(False, layer.merge_rating, layer.hash(), layer), *groups[excess + 1 :]]

    layers = [group[3] for group in groups]
    layers.sort(key=lambda layer: (-layer.merge_rating, layer.hash()))
    return layers
