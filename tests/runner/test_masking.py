from nixfarm.runner.masking import MASK, Masker

KEY = "-----BEGIN KEY-----\nAAAAB3NzaC1yc2EAAAADAQAB\nZm9vYmFyYmF6cXV4\n-----END KEY-----\n"


def test_masks_values_and_each_line_of_multiline_values() -> None:
    masker = Masker(["hunter2-password", KEY.encode()])
    assert masker.line("+ echo hunter2-password") == f"+ echo {MASK}"
    assert masker.line("AAAAB3NzaC1yc2EAAAADAQAB") == MASK
    assert "Zm9vYmFy" not in masker.line("x Zm9vYmFyYmF6cXV4 y")
    assert masker.line("nothing secret here") == "nothing secret here"


def test_short_values_are_left_alone() -> None:
    assert Masker(["ab"]).line("abc") == "abc"


def test_value_split_across_chunks_is_caught() -> None:
    secret = "s3cr3t-value-1234"
    text = f"start {secret} middle {secret}{secret} end"
    for size in range(1, len(text)):
        masker = Masker([secret])
        out = ""
        for i in range(0, len(text), size):
            out += masker.feed(text[i : i + size])
        out += masker.flush()
        assert secret not in out
        assert out == f"start {MASK} middle {MASK}{MASK} end", size
