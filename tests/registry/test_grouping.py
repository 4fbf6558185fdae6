from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence

import pytest

from nixfarm.errors import InvalidInput
from nixfarm.registry.grouping import (
    BIG_PATH_BYTES,
    Layer,
    group_layers,
    immediate_dominators,
    package_names,
    popularity_from_graph,
)

MB = 1_000_000


def sp(name: str) -> str:
    """A store path for ``name`` with a stable fake hash."""
    return f"/nix/store/{hashlib.sha256(name.encode()).hexdigest()[:32]}-{name}"


def names(layers: Sequence[Layer]) -> list[set[str]]:
    return [{package_names(p)[0] for p in layer.paths} for layer in layers]


# The example of the module's essay: E is popular and G is big.
EXAMPLE = {
    "A": ["E"],
    "B": ["E"],
    "C": ["E", "D"],
    "D": ["F"],
    "E": [],
    "F": ["G"],
    "G": [],
}
EXAMPLE_GRAPH = {sp(k): [sp(v) for v in refs] for k, refs in EXAMPLE.items()}
EXAMPLE_SIZES = {sp(k): s for k, s in zip("ABCDEFG", [1, 1, 1, 10, 5, 10, 200], strict=True)}
EXAMPLE_SIZES = {k: v * MB for k, v in EXAMPLE_SIZES.items()}
EXAMPLE_ROOTS = [sp(k) for k in "ABCD"]


def example(budget: int) -> list[Layer]:
    return group_layers(EXAMPLE_GRAPH, EXAMPLE_ROOTS, EXAMPLE_SIZES, {"E": 1000}, budget=budget)


def test_example_with_room_gives_one_layer_per_dominator_subtree() -> None:
    layers = names(example(10))
    assert layers[:3] == [{"E"}, {"G"}, {"D", "F"}]
    # A, B and C rate the same; the order among them is fixed by their hashes.
    assert sorted(map(sorted, layers[3:])) == [["A"], ["B"], ["C"]]
    assert layers == names(example(10))


def test_example_merges_the_least_valuable_groups_first() -> None:
    assert names(example(4)) == [{"E"}, {"G"}, {"D", "F"}, {"A", "B", "C"}]
    assert names(example(3)) == [{"E"}, {"G"}, {"A", "B", "C", "D", "F"}]
    # Big and popular groups are merged last, the less valuable of them first.
    assert names(example(2)) == [{"E"}, {"A", "B", "C", "D", "F", "G"}]
    assert names(example(1)) == [set("ABCDEFG")]


def test_merge_rating_is_popularity_times_size() -> None:
    ratings = {
        frozenset(n): layer.merge_rating
        for n, layer in zip(names(example(4)), example(4), strict=True)
    }
    assert ratings[frozenset("E")] == 1000 * 5 * MB
    assert ratings[frozenset("G")] == 200 * MB
    assert ratings[frozenset("DF")] == 20 * MB
    assert ratings[frozenset("ABC")] == 3 * MB


def test_layer_hash_is_sha256_of_sorted_paths() -> None:
    layer = example(1)[0]
    assert list(layer.paths) == sorted(EXAMPLE_GRAPH)
    assert layer.hash() == hashlib.sha256("\n".join(sorted(EXAMPLE_GRAPH)).encode()).hexdigest()


def package_set(seed: int, count: int = 300) -> tuple[dict[str, list[str]], dict[str, int]]:
    """A random package set: each package references a few older ones."""
    rng = random.Random(seed)
    paths = [sp(f"pkg{i}-{rng.randint(1, 9)}.{rng.randint(0, 20)}") for i in range(count)]
    graph: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for i, path in enumerate(paths):
        # Early packages are the libraries everything uses, as in nixpkgs.
        refs = {paths[int(rng.random() ** 3 * i)] for _ in range(rng.randint(0, 6))} if i else set()
        graph[path] = [*sorted(refs), path]  # Nix lists the self-reference too
        sizes[path] = rng.randint(1_000, 30 * MB)
    for path in rng.sample(paths, 5):
        sizes[path] = rng.randint(BIG_PATH_BYTES + 1, 3 * BIG_PATH_BYTES)
    return graph, sizes


def closure_of(graph: Mapping[str, Sequence[str]], roots: Sequence[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        path = stack.pop()
        if path not in seen:
            seen.add(path)
            stack.extend(graph[path])
    return seen


@pytest.mark.parametrize("budget", [1, 2, 5, 20, 94])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_budget_is_kept_and_every_path_is_in_exactly_one_layer(seed: int, budget: int) -> None:
    graph, sizes = package_set(seed)
    popularity = popularity_from_graph(graph)
    roots = random.Random(seed).sample(sorted(graph)[150:], 20)
    layers = group_layers(graph, roots, sizes, popularity, budget=budget, popular_threshold=8)
    assert 1 <= len(layers) <= budget
    placed = [p for layer in layers for p in layer.paths]
    assert len(placed) == len(set(placed))
    assert set(placed) == closure_of(graph, roots)
    assert all(list(layer.paths) == sorted(layer.paths) for layer in layers)
    ratings = [layer.merge_rating for layer in layers]
    assert ratings == sorted(ratings, reverse=True)


def test_big_and_popular_paths_get_layers_of_their_own() -> None:
    graph, sizes = package_set(4)
    popularity = popularity_from_graph(graph)
    roots = sorted(graph)[-40:]
    layers = group_layers(graph, roots, sizes, popularity, popular_threshold=8)
    closure = closure_of(graph, roots)
    big = {p for p in closure if sizes[p] > BIG_PATH_BYTES}
    popular = {p for p in closure if popularity.get(package_names(p)[0], 1) >= 8}
    assert big and popular and len(layers) < 94
    alone = {layer.paths[0] for layer in layers if len(layer.paths) == 1}
    assert big | popular <= alone


def test_a_big_path_leaves_its_private_dependencies_to_other_layers() -> None:
    graph = {sp("app"): [sp("data")], sp("data"): [sp("data-lib")], sp("data-lib"): []}
    sizes = {sp("app"): MB, sp("data"): 2 * BIG_PATH_BYTES, sp("data-lib"): MB}
    layers = group_layers(graph, [sp("app")], sizes, {})
    assert names(layers)[0] == {"data"}
    assert sorted(map(sorted, names(layers)[1:])) == [["app"], ["data-lib"]]


def test_same_inputs_in_any_order_give_the_same_layers() -> None:
    graph, sizes = package_set(5)
    popularity = popularity_from_graph(graph)
    roots = sorted(graph)[-20:]
    first = group_layers(graph, roots, sizes, popularity, budget=12, popular_threshold=8)
    rng = random.Random(0)
    shuffled = list(graph.items())
    rng.shuffle(shuffled)
    graph2 = {path: rng.sample(refs, len(refs)) for path, refs in shuffled}
    sizes2 = dict(rng.sample(list(sizes.items()), len(sizes)))
    roots2 = rng.sample(roots, len(roots)) + roots[:3]
    second = group_layers(graph2, roots2, sizes2, dict(popularity), budget=12, popular_threshold=8)
    assert first == second


def test_adding_a_package_keeps_most_layers() -> None:
    graph, sizes = package_set(6)
    popularity = popularity_from_graph(graph)
    rng = random.Random(6)
    roots = rng.sample(sorted(graph), 20)
    extra = next(p for p in sorted(graph, reverse=True) if p not in roots)

    def group(roots: list[str]) -> dict[str, Layer]:
        layers = group_layers(graph, roots, sizes, popularity, popular_threshold=8)
        return {layer.hash(): layer for layer in layers}

    before, after = group(roots), group([*roots, extra])
    kept = before.keys() & after.keys()
    kept_bytes = sum(sizes[p] for h in kept for p in before[h].paths)
    assert len(kept) >= 0.8 * len(before)
    assert kept_bytes >= 0.8 * sum(sizes[p] for layer in before.values() for p in layer.paths)


def test_popularity_is_found_by_path_name_or_package_name() -> None:
    graph: dict[str, list[str]] = {sp(n): [] for n in ("glibc-2.37-8", "zlib-1.3", "openssl-3.0.9")}
    sizes = dict.fromkeys(graph, MB)
    popularity = {
        sp("glibc-2.37-8"): 500,  # a full store path
        "zlib-1.3": 200,  # a store path's name
        "openssl": 100,  # a package name without version
    }
    layers = group_layers(graph, sorted(graph), sizes, popularity, budget=3)
    ratings = {package_names(layer.paths[0])[1]: layer.merge_rating for layer in layers}
    assert ratings == {"glibc": 500 * MB, "zlib": 200 * MB, "openssl": 100 * MB}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (sp("hello-2.12"), ("hello-2.12", "hello")),
        (sp("glibc-2.37-8-bin"), ("glibc-2.37-8-bin", "glibc")),
        (
            sp("perl5.36.0-libwww-perl-6.67"),
            ("perl5.36.0-libwww-perl-6.67", "perl5.36.0-libwww-perl"),
        ),
        (sp("busybox"), ("busybox", "busybox")),
        (sp("nss-cacert-3.92"), ("nss-cacert-3.92", "nss-cacert")),
    ],
)
def test_package_names(path: str, expected: tuple[str, str]) -> None:
    assert package_names(path) == expected


def test_popularity_from_graph_counts_direct_dependents() -> None:
    graph = {
        sp("a-1"): [sp("c-1"), sp("a-1")],
        sp("b-1"): [sp("c-1"), sp("d-1")],
        sp("c-1"): [sp("d-1")],
        sp("d-1"): [],
    }
    assert popularity_from_graph(graph) == {"c-1": 2, "d-1": 2}


def brute_force_idom(succ: Mapping[str, Sequence[str]], start: str) -> dict[str, str]:
    def reachable(skip: str) -> set[str]:
        seen, stack = set(), [start] if start != skip else []
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(c for c in succ[node] if c != skip)
        return seen

    nodes = reachable("")
    dominators = {n: {d for d in nodes if n not in reachable(d)} | {n} for n in nodes}
    idom = {start: start}
    for n in nodes - {start}:
        strict = dominators[n] - {n}
        idom[n] = next(d for d in strict if len(dominators[d]) == len(strict))
    return idom


@pytest.mark.parametrize("seed", range(20))
def test_dominators_match_brute_force_on_graphs_with_cycles(seed: int) -> None:
    rng = random.Random(seed)
    nodes = [f"n{i}" for i in range(25)]
    succ = {n: rng.sample(nodes, rng.randint(0, 3)) for n in nodes}
    succ["root"] = rng.sample(nodes, 3)
    assert immediate_dominators(succ, "root") == brute_force_idom(succ, "root")


def test_no_roots_give_no_layers() -> None:
    assert group_layers(EXAMPLE_GRAPH, [], EXAMPLE_SIZES, {}) == []


def test_bad_inputs_are_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        group_layers(EXAMPLE_GRAPH, EXAMPLE_ROOTS, EXAMPLE_SIZES, {}, budget=0)
    with pytest.raises(InvalidInput):
        group_layers(EXAMPLE_GRAPH, [sp("nope")], EXAMPLE_SIZES, {})
    with pytest.raises(InvalidInput):
        group_layers({sp("A"): [sp("B")]}, [sp("A")], {sp("A"): 1}, {})
    with pytest.raises(InvalidInput):
        group_layers(EXAMPLE_GRAPH, EXAMPLE_ROOTS, {sp("A"): 1}, {})
