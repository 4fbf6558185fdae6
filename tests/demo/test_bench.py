"""bench.nix: a synthetic closure of a chosen size, count and shape."""

import zlib
from pathlib import Path

from tests.demo import nixcli

MIB = 1024 * 1024


def test_bench_closure_has_the_requested_size_count_and_graph() -> None:
    args = ("--arg", "totalMB", "6", "--arg", "count", "7", "--argstr", "seed", "test")
    (top,) = nixcli.build_paths(file=nixcli.DEMO / "bench.nix", args=args)
    libraries = [Path(line) for line in (top / "share/bench/libraries").read_text().split()]
    assert [p.name.split("-", 1)[1] for p in libraries] == [
        f"bench-stest-lib{i}-1.0" for i in range(7)
    ]

    data = sum((lib / f"lib/libbench{i}.so").stat().st_size for i, lib in enumerate(libraries))
    assert data == 6 * MIB
    busybox = next(p for p in nixcli.references(top) if p.name.endswith("-busybox"))
    assert nixcli.closure(top) == {top, busybox, *libraries}

    # Library i refers to library 0 and to library (i-1)/2, like shared libraries do.
    for i, lib in enumerate(libraries):
        expected = set() if i == 0 else {libraries[0], libraries[(i - 1) // 2]}
        assert nixcli.references(lib) == expected, i

    with (libraries[1] / "lib/libbench1.so").open("rb") as blob:
        sample = blob.read(1 << 20)
    assert len(zlib.compress(sample, 9)) > len(sample)
