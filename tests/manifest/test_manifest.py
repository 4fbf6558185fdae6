"""What a valid manifest means, what the server refuses, and the limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixfarm.errors import InvalidInput
from nixfarm.manifest import (
    MAX_MANIFEST_BYTES,
    MAX_TASKS,
    Manifest,
    ManifestError,
    Problem,
    Source,
    Task,
    Trigger,
    check_supported,
    load_manifest,
    manifest_from_data,
)

FIXTURES = Path(__file__).parent / "fixtures"
IMAGES = ["alpine/3.19", "alpine/edge", "archlinux", "debian/bookworm", "nix"]
ARCHES = ["x86_64"]


def fixture(name: str) -> Manifest:
    return load_manifest((FIXTURES / name).read_text(), name=Path(name).name)


def refusal(text: str | bytes) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        load_manifest(text)
    return caught.value


def test_every_key_of_the_full_fixture() -> None:
    m = fixture("good/full.yml")
    assert m.image == "alpine/3.19"
    assert m.arch == "x86_64"
    assert m.packages == ["go", "py3-pip"]
    assert m.repositories == {
        "sr.ht": "https://mirror.sr.ht/alpine/v3.19/sr.ht/ "
        "https://mirror.sr.ht/alpine/alpine%40sr.ht.rsa.pub alpine@sr.ht.rsa.pub\n"
    }
    assert [(s.scm, s.url, s.ref, s.directory) for s in m.sources] == [
        ("git", "https://git.sr.ht/~sircmpwn/hare", None, "hare"),
        ("git", "https://gitlab.example.org/group/tool.git", "v1.2.0", "tool"),
        ("git", "https://git.sr.ht/~example/website", None, "docs"),
        ("hg", "https://hg.sr.ht/~example/legacy", None, "legacy"),
        ("git", "git@git.sr.ht:~example/private-repo", None, "private-repo"),
        ("git", "ssh://git@example.org/vendor.git", "main", "vendored"),
    ]
    # YAML 1.1 scalars, as builds.sr.ht reads them: yes is true, 0755 is octal; each
    # becomes the text the job sees.
    assert m.environment == {
        "GREETING": "hello world",
        "JOBS": "4",
        "RATIO": "0.5",
        "VERBOSE": "true",
        "DEBUG": "false",
        "MODE": "493",
        "TARGETS": ["x86_64", "aarch64"],
        "EMPTY": "",
    }
    assert m.secrets == ["0f3e8a4c-0b1a-4f4e-9a7e-1c2d3e4f5a6b", "deploy-key"]
    assert m.tasks == [
        Task(name="setup", script="cd hare\n./configure\n"),
        Task(name="build", script="make -C hare"),
        Task(name="test_all-1", script="make -C hare check\n"),
    ]
    assert m.triggers == [
        Trigger(
            action="email",
            condition="failure",
            to="Jane Doe <jane@example.org>, ops@example.org",
            cc="<list@lists.example.org>",
            in_reply_to="<123@mail.example.org>",
        ),
        Trigger(
            action="webhook", condition="always", url="https://hooks.example.org/builds?token=abc"
        ),
    ]
    assert m.artifacts == ["hare/hare.tar.gz", "~/report.txt"]
    assert m.shell is False
    assert m.oauth is None
    assert m.cache == "main"


def test_defaults_and_nulls() -> None:
    m = fixture("good/nulls.yml")
    assert (m.arch, m.packages, m.sources, m.environment, m.secrets) == (None, [], [], {}, [])
    assert (m.triggers, m.artifacts, m.oauth, m.cache, m.shell) == ([], [], None, None, False)


def test_anchors_and_merge_keys() -> None:
    m = fixture("good/anchors.yml")
    assert m.environment == {"CC": "clang", "OPTIMIZE": "true"}
    assert [(t.action, t.condition, t.to) for t in m.triggers] == [
        ("email", "failure", "dev@example.org"),
        ("email", "success", "dev@example.org"),
    ]
    assert [t.script for t in m.tasks] == ["make\n", "make\n"]


def test_nix_image_with_cache() -> None:
    m = fixture("good/nix.yml")
    assert (m.image, m.cache) == ("nix", "demo-cache")
    assert m.packages == ["hello", "python3Packages.requests"]


def test_dump_is_the_manifest_shape_and_round_trips() -> None:
    m = fixture("good/full.yml")
    data = m.model_dump()
    assert data["tasks"][1] == {"build": "make -C hare"}
    assert data["sources"][2] == "docs::https://git.sr.ht/~example/website"
    assert manifest_from_data(data) == m
    assert Manifest.model_validate_json(m.model_dump_json()) == m


def test_manifest_remembers_where_keys_were_written() -> None:
    m = fixture("good/full.yml")
    spot = m.spot("tasks", 1)
    assert spot is not None
    assert (spot.value.line, spot.value.column) == (37, 5)
    assert m.spot("cache") is not None
    assert manifest_from_data(m.model_dump()).spot("cache") is None


def test_data_without_text_is_refused_without_positions() -> None:
    with pytest.raises(ManifestError) as caught:
        manifest_from_data({"image": "alpine/edge", "tasks": [{"Build!": "make"}]})
    assert caught.value.problems == [
        Problem("tasks[0]", 0, 0, "task name 'Build!' must match ^[a-z0-9_-]+$")
    ]
    assert caught.value.message == (
        "Invalid manifest: tasks[0]: task name 'Build!' must match ^[a-z0-9_-]+$"
    )


def test_manifest_error_is_invalid_input() -> None:
    error = refusal("image: alpine/edge\n")
    assert isinstance(error, InvalidInput)
    assert error.field == "tasks"


def test_models_can_be_built_in_code() -> None:
    m = Manifest(
        image="nix",
        tasks=[Task(name="build", script="true")],
        sources=[
            Source(spec="x::https://e.org/r", scm="git", url="https://e.org/r", directory="x")
        ],
    )
    assert m.model_dump()["sources"] == ["x::https://e.org/r"]
    with pytest.raises(ManifestError, match="task name 'B' must match"):
        manifest_from_data({"image": "nix", "tasks": [{"B": "true"}]})


# --- check_supported --------------------------------------------------------------


def test_supported_manifests_pass() -> None:
    for name in ("good/full.yml", "good/nix.yml", "good/anchors.yml", "real/clight.build.yml"):
        check_supported(fixture(name), IMAGES, ARCHES, caches=["main", "demo-cache"])


def test_oauth_is_refused() -> None:
    with pytest.raises(ManifestError) as caught:
        check_supported(fixture("good/oauth.yml"), IMAGES, ARCHES, name="oauth.yml")
    assert caught.value.message == (
        "Invalid manifest oauth.yml: oauth: line 3, column 8: oauth is not supported: "
        "nixfarm gives jobs no OAuth tokens; remove the key"
    )


def test_manifests_as_people_write_them() -> None:
    m = fixture("good/as-people-write.yml")
    # Unknown keys are ignored, as builds.sr.ht ignores them, each with a warning at its
    # key; a near miss gets its correction. submitter (git.sr.ht's) passes quietly.
    assert [str(w) for w in m.warnings] == [
        "site: line 9, column 1: unknown key 'site' is ignored",
        "enviroment: line 10, column 1: unknown key 'enviroment' is ignored; "
        "did you mean 'environment'?",
    ]
    assert m.oauth is None  # oauth: "" asks for nothing
    check_supported(m, IMAGES, ARCHES)  # so the server has nothing to refuse
    # Numbers are exported as their text, in lists too (yes is YAML 1.1's true).
    assert m.environment == {"PORT": "8080", "RATIO": "1.5",
                             "VERSIONS": ["3", "3.11", "edge", "true"]}
    assert [s.directory for s in m.sources] == ["vendor/lib", "app"]
    [trigger] = m.triggers
    assert (trigger.to, trigger.cc) == (None, "Dev List <dev@lists.example.org>")
    assert manifest_from_data(m.model_dump()) == m  # what the runner gets back


def test_unknown_keys_elsewhere_and_refusals_keep_their_warnings() -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifest("imgae: alpine/edge\ntasks:\n  - a: b\n")
    assert caught.value.message == (
        "Invalid manifest: image: line 1, column 1: missing key 'image'; "
        "expected an image such as alpine/edge or nix")
    assert [str(w) for w in caught.value.warnings] == [
        "imgae: line 1, column 1: unknown key 'imgae' is ignored; did you mean 'image'?"]
    # A webhook trigger with only cc, and an email trigger with neither: refused.
    with pytest.raises(ManifestError) as caught:
        load_manifest("image: nix\ntasks:\n  - a: b\ntriggers:\n"
                      "  - {action: email, condition: always}\n")
    assert "an email trigger needs 'to' or 'cc'" in caught.value.message


def test_unavailable_image_arch_shell_and_cache_are_refused_together() -> None:
    m = load_manifest(
        "image: alpine/3.99\narch: riscv64\nshell: true\ncache: other\ntasks:\n  - a: b\n"
    )
    with pytest.raises(ManifestError) as caught:
        check_supported(m, IMAGES, ARCHES, caches=["main"])
    assert [str(p) for p in caught.value.problems] == [
        "image: line 1, column 8: image 'alpine/3.99' is not available on this server; "
        "available images: alpine/3.19, alpine/edge, archlinux, debian/bookworm, nix",
        "arch: line 2, column 7: arch 'riscv64' is not available on this server; "
        "available arches: x86_64",
        "shell: line 3, column 8: shell: true (keeping a failed job open for a shell) is not "
        "supported by this server",
        "cache: line 4, column 8: there is no cache named 'other' that this job may push to",
    ]
    check_supported(m, ["alpine/3.99"], ["riscv64"], shell=True)  # caches unchecked: None


def test_real_manifest_on_an_image_we_lack() -> None:
    with pytest.raises(ManifestError, match=r"image '9front' is not available on this server"):
        check_supported(fixture("real/acme-lsp.build.yml"), IMAGES, ARCHES)


def test_no_images_at_all() -> None:
    with pytest.raises(ManifestError, match="available images: none"):
        check_supported(fixture("good/nix.yml"), [], ARCHES)


# --- limits and malformed input -----------------------------------------------------


def test_size_limit() -> None:
    padding = "# " + "x" * 100 + "\n"
    text = "image: alpine/edge\ntasks:\n  - a: b\n"
    text += padding * ((MAX_MANIFEST_BYTES - len(text)) // len(padding))
    assert load_manifest(text).image == "alpine/edge"
    error = refusal(text + padding)
    assert error.message == (
        f"Invalid manifest: line 1, column 1: the manifest is {len(text) + len(padding)} bytes; "
        "at most 131072 bytes (128 KiB) are allowed"
    )


def test_task_count_limit() -> None:
    tasks = "".join(f"  - t{i}: echo {i}\n" for i in range(MAX_TASKS))
    assert len(load_manifest(f"image: alpine/edge\ntasks:\n{tasks}").tasks) == MAX_TASKS
    error = refusal(f"image: alpine/edge\ntasks:\n{tasks}  - one-more: x\n")
    assert [str(p) for p in error.problems] == [
        "tasks: line 3, column 3: at most 100 entries are allowed, got 101"
    ]


def test_task_name_length_limit() -> None:
    error = refusal(f"image: alpine/edge\ntasks:\n  - {'a' * 129}: x\n")
    assert [str(p) for p in error.problems] == [
        "tasks[0]: line 3, column 5: at most 128 characters are allowed"
    ]


def test_not_utf8() -> None:
    error = refusal(b"image: alpine/edge\ntasks:\n  - build: caf\xe9\n")
    assert error.message == (
        "Invalid manifest: line 3, column 15: the manifest is not UTF-8 (byte 0xe9)"
    )


def test_control_character() -> None:
    error = refusal("image: alpine/edge\x00\n")
    assert error.message == (
        "Invalid manifest: line 1, column 19: YAML syntax error: unacceptable character U+0000"
    )


def test_byte_order_mark_is_accepted() -> None:
    assert load_manifest(b"\xef\xbb\xbfimage: nix\ntasks:\n  - a: b\n").image == "nix"


def test_alias_expansion_is_capped() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    error = refusal("\n".join(lines) + "\n")
    assert error.message == (
        "Invalid manifest: line 1, column 5: the manifest expands to over 100000 values "
        "(through anchors and aliases)"
    )


def test_nesting_is_capped() -> None:
    error = refusal("image: nix\ntasks:\n  - a: b\nenvironment:\n  X: " + "[" * 40 + "]" * 40)
    assert error.message == (
        "Invalid manifest: line 5, column 36: the manifest is nested more than 32 levels deep"
    )
    deep = refusal("[" * 50_000)
    assert deep.message == (
        "Invalid manifest: line 1, column 33: the manifest is nested more than 32 levels deep"
    )
    # Aliases nest without nesting the text: the same cap applies while expanding.
    chain = "".join(f"e{i}: &e{i} [*e{i - 1}]\n" for i in range(1, 40))
    aliased = refusal("e0: &e0 [x]\n" + chain)
    assert "nested more than 32 levels deep" in [p.message for p in aliased.problems]


def test_sexagesimal_and_timestamps_stay_strings() -> None:
    m = load_manifest("image: nix\nenvironment:\n  T: 1:30\n  D: 2024-01-02\ntasks:\n  - a: b\n")
    assert m.environment == {"T": "1:30", "D": "2024-01-02"}
