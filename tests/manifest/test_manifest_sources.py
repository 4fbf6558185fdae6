"""The sources string, read as builds.sr.ht's worker reads it."""

from __future__ import annotations

import pytest

from nixfarm.manifest.sources import ParsedSource, Scm, parse_source


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("https://git.sr.ht/~u/repo", ("git", "https://git.sr.ht/~u/repo", None, "repo")),
        ("https://e.org/r.git#v1", ("git", "https://e.org/r.git", "v1", "r")),
        ("https://e.org/r/", ("git", "https://e.org/r/", None, "r")),
        ("dir::https://e.org/r.git", ("git", "https://e.org/r.git", None, "dir")),
        ("keep.git::https://e.org/r", ("git", "https://e.org/r", None, "keep.git")),
        ("::https://e.org/r", ("git", "https://e.org/r", None, "r")),
        ("hg+https://hg.sr.ht/~u/r#tip", ("hg", "https://hg.sr.ht/~u/r", "tip", "r")),
        ("hg+ssh://hg@hg.sr.ht/~u/r.git", ("hg", "ssh://hg@hg.sr.ht/~u/r.git", None, "r.git")),
        ("git+ssh://git@e.org/r", ("git", "ssh://git@e.org/r", None, "r")),
        ("git@git.sr.ht:~u/r", ("git", "git@git.sr.ht:~u/r", None, "r")),
        ("d::git@e.org:r.git#abc123", ("git", "git@e.org:r.git", "abc123", "d")),
        ("file:///srv/git/r.git", ("git", "file:///srv/git/r.git", None, "r")),
    ],
)
def test_accepted(spec: str, expected: tuple[Scm, str, str | None, str]) -> None:
    scm, url, ref, directory = expected
    assert parse_source(spec) == ParsedSource(scm=scm, url=url, ref=ref, directory=directory)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "expected a repository URL, got an empty string"),
        ("https://e.org/r#-x", "ref '-x' must not start with '-'"),
        ("a::b::https://e.org/r", "has more than one '::'"),
        ("-d::https://e.org/r", "directory '-d' must not start with '-'"),
        ("..::https://e.org/r", "must be a relative path inside the build directory"),
            ("a/../..::https://e.org/r", "no '.' or '..'"),
            ("/etc::https://e.org/r", "no leading '/'"),
            ("a//b::https://e.org/r", "no empty parts"),
            ("a/-b::https://e.org/r", "must not start with '-'"),
        ("svn://e.org/r", "unsupported URL scheme 'svn'"),
        ("e.org/r", "expected a repository URL such as"),
        ("hg+file:///srv/r", "unsupported URL scheme 'file'"),
        ("https:///r", "has no host"),
        ("x" * 2049, "at most 2048 characters"),
    ],
)
def test_refused(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_source(spec)
    assert message in str(caught.value)
