"""Every manifest fixture either validates or is refused with exactly this message.

Fixtures live in fixtures/good (ours, valid), fixtures/bad (ours, one error kind or
key each), and fixtures/real (copied from public projects; see fixtures/README.md).
A new fixture without an entry here fails ``test_every_fixture_is_accounted_for``.
"""
# ruff: noqa: E501  (the expected messages are long on purpose: asserted whole)

from __future__ import annotations

from pathlib import Path

import pytest

from nixfarm.manifest import ManifestError, load_manifest

FIXTURES = Path(__file__).parent / "fixtures"

REFUSED = {
    "bad/bad-arch.yml": "Invalid manifest bad-arch.yml: arch: line 2, column 7: arch 'x86-64' is not an architecture name such as x86_64",
    "bad/bad-artifacts.yml": (
        "Invalid manifest bad-artifacts.yml (2 problems):"
        "\n"
        "  artifacts[0]: line 5, column 5: artifact 'out/' must name a file, not a directory"
        "\n"
        "  artifacts[1]: line 6, column 5: expected a file path"
    ),
    "bad/bad-environment.yml": (
        "Invalid manifest bad-environment.yml (6 problems):"
        "\n"
        "  environment.1ST: line 3, column 3: environment variable name '1ST' must match ^[A-Za-z_][A-Za-z0-9_]*$"
        "\n"
        "  environment.MY-VAR: line 4, column 3: environment variable name 'MY-VAR' must match ^[A-Za-z_][A-Za-z0-9_]*$"
        "\n"
        "  environment.JOB_ID: line 5, column 3: JOB_ID is set by the build server and cannot be overridden"
        "\n"
        "  environment.NESTED: line 7, column 5: expected a string, number, boolean or list of them, got a mapping"
        "\n"
        "  environment.MIXED[1]: line 8, column 14: expected a string or a number, got a mapping"
        "\n"
        "  environment.NAN: line 9, column 8: expected a finite number, got nan"
    ),
    "bad/bad-image.yml": "Invalid manifest bad-image.yml: image: line 1, column 8: image 'Alpine Linux/3.19' is not an image name; expected distro/release (alpine/edge), a rolling distro (archlinux) or nix",
    "bad/bad-merge.yml": (
        "Invalid manifest bad-merge.yml (2 problems):"
        "\n"
        "  triggers[0]: line 5, column 10: a merge key (<<) takes a mapping or a list of mappings, not the scalar 'not'"
        "\n"
        "  triggers[0]: line 5, column 15: a merge key (<<) takes a mapping or a list of mappings, not the scalar 'mappings'"
    ),
    "bad/bad-packages.yml": (
        "Invalid manifest bad-packages.yml (3 problems):"
        "\n"
        "  packages[1]: line 4, column 5: package '--allow-untrusted' must be one name without spaces, not starting with '-'"
        "\n"
        "  packages[2]: line 5, column 5: package 'two words' must be one name without spaces, not starting with '-'"
        "\n"
        "  packages[3]: line 6, column 5: expected a string, got the number 3"
    ),
    "bad/bad-repositories.yml": (
        "Invalid manifest bad-repositories.yml (3 problems):"
        "\n"
        "  repositories[\"my repo\"]: line 3, column 3: repository name 'my repo' must match ^[A-Za-z0-9][A-Za-z0-9._-]*$"
        "\n"
        "  repositories.empty: line 4, column 3: expected a non-empty string"
        "\n"
        "  repositories.list: line 5, column 9: expected a string, got a list"
    ),
    "bad/bad-scalars.yml": (
        "Invalid manifest bad-scalars.yml (3 problems):"
        "\n"
        "  shell: line 4, column 8: expected true or false, got the string 'sometimes'"
        "\n"
        "  oauth: line 5, column 8: expected a string, got a list"
        "\n"
        "  cache: line 6, column 8: cache name 'My Cache' must match ^[a-z0-9][a-z0-9._-]{0,62}$"
    ),
    "bad/bad-secrets.yml": (
        "Invalid manifest bad-secrets.yml (2 problems):"
        "\n"
        "  secrets[0]: line 3, column 5: secret 'ab' is neither a UUID nor a secret name (3 to 512 printable characters)"
        "\n"
        "  secrets[3]: line 6, column 5: expected a string, got the number 7"
    ),
    "bad/bad-sources.yml": (
        "Invalid manifest bad-sources.yml (10 problems):"
        "\n"
        "  sources[0]: line 3, column 5: unsupported URL scheme 'ftp' in 'ftp://example.org/repo'; expected file, git, http, https, ssh"
        "\n"
        "  sources[1]: line 4, column 5: source 'https://example.org/repo#' has an empty ref after '#'"
        "\n"
        "  sources[2]: line 5, column 5: source 'https://example.org/a#b#c' has more than one '#'; expected url#ref"
        "\n"
        "  sources[3]: line 6, column 5: unsupported version control 'svn' in 'svn+https://example.org/repo'; expected git+ or hg+"
        "\n"
        "  sources[4]: line 7, column 5: URL '-upload-pack=evil' must not start with '-'"
        "\n"
        "  sources[5]: line 8, column 5: directory '../escape' in '../escape::https://example.org/repo' must be a relative path inside the build directory (no leading '/', no '.' or '..', no empty parts)"
        "\n"
        "  sources[6]: line 9, column 5: expected a repository URL such as https://git.sr.ht/~user/repo or git@host:path, got '/srv/git/repo'"
        "\n"
        "  sources[7]: line 10, column 5: URL 'https://example.org/' names no repository"
        "\n"
        "  sources[8]: line 11, column 5: source 'https://example.org/my repo' contains whitespace"
        "\n"
        "  sources[9]: line 12, column 5: expected a repository URL string, got the number 42"
    ),
    "bad/bad-triggers.yml": (
        "Invalid manifest bad-triggers.yml (8 problems):"
        "\n"
        "  triggers[0].action: line 5, column 13: expected 'email' or 'webhook', got the string 'sms'"
        "\n"
        "  triggers[1].condition: line 8, column 16: expected 'success', 'failure' or 'always', got the string 'sometimes'"
        "\n"
        "  triggers[2].to: line 10, column 5: an email trigger needs 'to' or 'cc'"
        "\n"
        "  triggers[3].to: line 14, column 9: 'not an address' is not a list of email addresses (Name <user@example.org>, ...)"
        "\n"
        "  triggers[4].url: line 18, column 10: webhook url 'ftp://example.org/hook' must be an http:// or https:// URL"
        "\n"
        "  triggers[5].headers: line 22, column 5: unknown key 'headers'; expected one of action, condition, to, cc, in_reply_to, url"
        "\n"
        "  triggers[6].action: line 23, column 5: missing key 'action'; expected email or webhook"
        "\n"
        "  triggers[7].to: line 27, column 9: must be one line"
    ),
    "bad/comments-only.yml": "Invalid manifest comments-only.yml: line 1, column 1: the manifest is empty; expected a mapping with image and tasks",
    "bad/duplicate-artifact.yml": "Invalid manifest duplicate-artifact.yml: artifacts[1]: line 6, column 5: artifact file name 'app.tar.gz' is already listed at index 0",
    "bad/duplicate-directory.yml": "Invalid manifest duplicate-directory.yml: sources[1]: line 4, column 5: clone directory 'tool' is already listed at index 0",
    "bad/duplicate-key.yml": "Invalid manifest duplicate-key.yml: image: line 4, column 1: duplicate key 'image' (first set on line 1)",
    "bad/duplicate-task.yml": "Invalid manifest duplicate-task.yml: tasks[2]: line 5, column 5: task 'build' is already listed at index 0",
    "bad/empty.yml": "Invalid manifest empty.yml: line 1, column 1: the manifest is empty; expected a mapping with image and tasks",
    "bad/image-not-string.yml": "Invalid manifest image-not-string.yml: image: line 1, column 8: expected a string, got a list",
    "bad/list-document.yml": "Invalid manifest list-document.yml: line 1, column 1: expected a mapping (image: ..., tasks: ...) at the top of the manifest, got a list",
    "bad/missing-image.yml": "Invalid manifest missing-image.yml: image: line 1, column 1: missing key 'image'; expected an image such as alpine/edge or nix",
    "bad/nix-with-repositories.yml": "Invalid manifest nix-with-repositories.yml: repositories: line 3, column 3: the nix image takes its packages from the server's Nix package source; repositories only apply to distro images",
    "bad/no-tasks.yml": "Invalid manifest no-tasks.yml: tasks: line 1, column 1: a manifest needs at least one task (or shell: true)",
    "bad/packages-string.yml": "Invalid manifest packages-string.yml: packages: line 2, column 11: expected a list, got the string 'gcc make'",
    "bad/scalar-document.yml": "Invalid manifest scalar-document.yml: line 1, column 1: expected a mapping (image: ..., tasks: ...) at the top of the manifest, got the scalar 'just a string'",
    "bad/syntax-error.yml": "Invalid manifest syntax-error.yml: line 4, column 1: YAML syntax error: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence at line 3)",
    "bad/tab-indent.yml": "Invalid manifest tab-indent.yml: line 3, column 1: YAML syntax error: found character '\\t' that cannot start any token",
    "bad/tags.yml": (
        "Invalid manifest tags.yml (2 problems):"
        "\n"
        "  image: line 1, column 8: unsupported YAML tag 'binary'; expected a plain string, number, boolean or null"
        "\n"
        "  tasks[0].build: line 3, column 12: unsupported YAML tag '!custom'; expected a plain string, number, boolean or null"
    ),
    "bad/task-name.yml": "Invalid manifest task-name.yml: tasks[1]: line 7, column 5: task name 'Build!' must match ^[a-z0-9_-]+$",
    "bad/task-script.yml": (
        "Invalid manifest task-script.yml (2 problems):"
        "\n"
        "  tasks[0].build: line 3, column 5: the script of task 'build' must be a string, got null"
        "\n"
        "  tasks[1].test: line 4, column 11: the script of task 'test' must be a string, got a list"
    ),
    "bad/task-shape.yml": (
        "Invalid manifest task-shape.yml (2 problems):"
        "\n"
        "  tasks[0]: line 3, column 5: expected a task as one 'name: script' entry, got the string 'make'"
        "\n"
        "  tasks[1]: line 4, column 5: expected a task as one 'name: script' entry, got a mapping with 2 keys"
    ),
    "bad/tasks-mapping.yml": "Invalid manifest tasks-mapping.yml: tasks: line 3, column 3: expected a list, got a mapping",
    "bad/two-documents.yml": "Invalid manifest two-documents.yml: line 4, column 1: YAML syntax error: expected a single document in the stream, but found another document",
    # A GitLab CI file: no image. Its keys are unknown to builds.sr.ht, which ignores them
    # (warnings here), and refuses it for the missing image alone.
    "real/arctica-greeter.build.yml": "Invalid manifest arctica-greeter.build.yml: image: line 4, column 1: missing key 'image'; expected an image such as alpine/edge or nix",
}


def _all_fixtures() -> list[str]:
    return sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("*/*") if p.suffix == ".yml")


VALID = [name for name in _all_fixtures() if name not in REFUSED]


def test_every_fixture_is_accounted_for() -> None:
    assert set(REFUSED) <= set(_all_fixtures())
    assert all(name.startswith(("good/", "real/")) for name in VALID)
    assert not [name for name in _all_fixtures() if name.startswith("bad/") and name not in REFUSED]
    assert len([n for n in VALID if n.startswith("real/")]) >= 10


@pytest.mark.parametrize("name", VALID)
def test_valid_fixture(name: str) -> None:
    manifest = load_manifest((FIXTURES / name).read_bytes(), name=Path(name).name)
    assert manifest.image
    assert manifest.tasks or manifest.shell


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_fixture(name: str) -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifest((FIXTURES / name).read_bytes(), name=Path(name).name)
    assert caught.value.message == REFUSED[name]
    assert str(caught.value) == REFUSED[name]
    # The structured problems say the same, and the first names the error's field.
    lines = REFUSED[name].split("\n")
    problems = [str(p) for p in caught.value.problems]
    assert problems == ([line.strip() for line in lines[1:]] or [lines[0].split(": ", 1)[1]])
    assert caught.value.field == caught.value.problems[0].path
