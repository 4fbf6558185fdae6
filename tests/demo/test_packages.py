"""The demo set's ordinary packages: names, metadata, programs and runtime closures."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.demo import nixcli

EXPECTED_ATTRIBUTES = {*nixcli.ORDINARY, "bigdata", "broken", "slow"}


def run_program(program: Path, *args: str, stdin: str = "", cwd: Path | None = None) -> str:
    """Run a program with an empty environment (no PATH to lean on), return its stdout."""
    done = subprocess.run(
        [str(program), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={},
        cwd=cwd,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_path_holds_the_package_set() -> None:
    assert (nixcli.DEMO / "default.nix").is_file()
    assert (nixcli.DEMO / "bench.nix").is_file()


def test_attributes_are_the_packages_each_with_a_description() -> None:
    meta = nixcli.evaluate(
        f"builtins.mapAttrs (name: p: {{ type = p.type; description = p.meta.description; }})"
        f" (import {nixcli.DEMO} {{}})"
    )
    assert set(meta) == EXPECTED_ATTRIBUTES
    for name, info in meta.items():
        assert info["type"] == "derivation", name
        assert len(info["description"]) > 10, name


def test_hello_prints_hello_world(built: dict[str, Path]) -> None:
    assert run_program(built["hello"] / "bin/hello") == "Hello, world!\n"


def test_hello_depends_on_busybox_alone(built: dict[str, Path]) -> None:
    assert nixcli.closure(built["hello"]) == {built["hello"], built["busybox"]}
    script = (built["hello"] / "bin/hello").read_text()
    assert script.startswith(f"#!{built['busybox']}/bin/sh\n")


def test_busybox_is_a_directory_of_applets(built: dict[str, Path]) -> None:
    bin_dir = built["busybox"] / "bin"
    assert (bin_dir / "busybox").is_file()
    for applet in ("sh", "ls", "cat", "echo", "env", "awk", "sed", "tar"):
        assert os.readlink(bin_dir / applet) == "busybox", applet
    assert run_program(bin_dir / "sh", "-c", "echo $((6 * 7))") == "42\n"
    assert nixcli.closure(built["busybox"]) == {built["busybox"]}


@pytest.mark.parametrize(
    ("package", "args", "stdin", "expected"),
    [
        ("greet", ("-l", "fr", "Ada"), "", "Bonjour, Ada!\n"),
        ("greet", (), "", "Hello, world!\n"),
        ("cowsay", ("moo",), "", " -----\n< moo >\n -----\n        \\   ^__^\n"),
        ("cowsay", ("-f", "tux"), "from stdin", "< from stdin >"),
        (
            "banner",
            ("Hi!",),
            "",
            "#   # ##### #\n#   #   #   #\n#####   #   #\n#   #   #\n#   # ##### #\n",
        ),
        ("fortune", ("-n", "1"), "", "There is no cloud, it's just someone else's computer.\n"),
        ("bashInteractive", ("-c", "echo $((1 + 2))"), "", "3\n"),
    ],
)
def test_programs_run(
    built: dict[str, Path], package: str, args: tuple[str, ...], stdin: str, expected: str
) -> None:
    program = "bash" if package == "bashInteractive" else package
    assert expected in run_program(built[package] / "bin" / program, *args, stdin=stdin)


def test_fortune_picks_from_its_data(built: dict[str, Path]) -> None:
    sayings = (built["fortunes"] / "share/fortunes/fortunes").read_text().split("%\n")
    assert run_program(built["fortune"] / "bin/fortune") in sayings


def test_tree_draws_a_directory(built: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "a-b").write_text("")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("")
    (tmp_path / "z").write_text("")
    expected = ".\n|-- a/\n|   `-- x\n|-- a-b\n`-- z\n\n1 directories, 3 files\n"
    assert run_program(built["tree"] / "bin/tree", cwd=tmp_path) == expected


def test_motd_combines_banner_fortune_and_cowsay(built: dict[str, Path]) -> None:
    out = run_program(built["motd"] / "bin/motd", "ok")
    assert out.startswith(" ###  #   #\n")
    assert "(oo)" in out


def test_moreutils_chronic_and_sponge(built: dict[str, Path], tmp_path: Path) -> None:
    chronic = str(built["moreutils"] / "bin/chronic")
    sh = str(built["busybox"] / "bin/sh")
    # chronic shows a command's output only when it fails, and passes its status on.
    assert run_program(Path(chronic), sh, "-c", "echo noise") == ""
    failed = subprocess.run(
        [chronic, sh, "-c", "echo oops; exit 3"],
        capture_output=True,
        text=True,
        env={},
        check=False,
    )
    assert (failed.returncode, failed.stdout) == (3, "oops\n")

    target = tmp_path / "lines"
    target.write_text("b\na\n")
    sort = built["coreutils"] / "bin/sort"
    pipeline = f"{sort} {target} | {built['moreutils']}/bin/sponge {target}"
    subprocess.run([str(built["busybox"] / "bin/sh"), "-c", pipeline], check=True, env={})
    assert target.read_text() == "a\nb\n"


def test_shell_stand_ins_provide_their_programs(built: dict[str, Path]) -> None:
    for package, programs in {
        "bashInteractive": ("bash", "sh"),
        "coreutils": ("ls", "cat", "cp", "env", "sort", "sha256sum"),
        "nano": ("nano",),
        "moreutils": ("sponge", "chronic", "ifne", "ts"),
    }.items():
        for program in programs:
            assert os.access(built[package] / "bin" / program, os.X_OK), (package, program)
        assert built["busybox"] in nixcli.references(built[package]), package


def test_runtime_graph_has_shared_dependencies(built: dict[str, Path]) -> None:
    refs = {name: nixcli.references(path) for name, path in built.items()}
    assert refs["greet"] == {built["libgreeting"], built["busybox"]}
    assert refs["cowsay"] == {built["libgreeting"], built["busybox"]}
    assert refs["banner"] == {built["banner-font"], built["busybox"]}
    assert refs["fortune"] == {built["fortunes"], built["busybox"]}
    assert refs["banner-font"] == refs["fortunes"] == set()
    assert nixcli.closure(built["motd"]) == {
        built[name]
        for name in (
            "motd",
            "banner",
            "banner-font",
            "fortune",
            "fortunes",
            "cowsay",
            "libgreeting",
            "busybox",
        )
    }


def test_builds_are_reproducible(built: dict[str, Path]) -> None:
    # --check rebuilds and compares with the stored output byte for byte.
    done = nixcli.build("-A", "motd", "-A", "hello", "-A", "busybox", "--check")
    assert done.returncode == 0, done.stderr


def test_store_paths_do_not_depend_on_where_the_set_lives(tmp_path: Path) -> None:
    # Sources are imported by content, so an installed copy of the set (site-packages)
    # and a checkout agree on every store path.
    copy = tmp_path / "demo"
    shutil.copytree(nixcli.DEMO, copy, ignore=shutil.ignore_patterns("__pycache__"))
    expression = "builtins.mapAttrs (name: p: p.drvPath) (import {} {{}})"
    assert nixcli.evaluate(expression.format(copy)) == nixcli.evaluate(
        expression.format(nixcli.DEMO)
    )
