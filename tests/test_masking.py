from nixfarm.masking import MASK, MIN_LENGTH, Masker, needles

KEY = "-----BEGIN KEY-----\nAAAAB3NzaC1yc2EAAAADAQAB\nZm9vYmFyYmF6cXV4\n-----END KEY-----\n"


def test_masks_values_and_each_line_of_multiline_values() -> None:
    masker = Masker(["hunter2-password", KEY.encode()])
    assert masker.line("+ echo hunter2-password") == f"+ echo {MASK}"
    assert masker.line("AAAAB3NzaC1yc2EAAAADAQAB") == MASK
    assert "Zm9vYmFy" not in masker.line("x Zm9vYmFyYmF6cXV4 y")
    assert masker.line("nothing secret here") == "nothing secret here"
    # Printed whole, the key is one mask, not one per line.
    assert masker.line(KEY) == f"{MASK}\n"


def test_the_rule() -> None:
    # Whole values and lines, trimmed; shorter than MIN_LENGTH bytes are left alone.
    assert MIN_LENGTH == 8
    assert needles([b"  1234567\n", "12345678\n", b"x\n\tline-two \r\nab"]) == [
        b"x\n\tline-two \r\nab", b"12345678", b"line-two"]
    assert Masker(["ab"]).line("abc") == "abc"
    assert Masker(["1234567"]).line("1234567") == "1234567"
    assert Masker(["12345678"]).line("012345678") == f"0{MASK}"


def test_bytes_chunks_are_masked_like_lines() -> None:
    masker = Masker([KEY.encode(), b"\xff\xfe-binary-token"])
    text = f"cat: {KEY}then AAAAB3NzaC1yc2EAAAADAQAB\n"
    assert masker.chunk(text.encode()) == masker.line(text).encode()
    assert masker.chunk(b"x \xff\xfe-binary-token y") == f"x {MASK} y".encode()
    # Not UTF-8: matched as the log's text would show it, decoded with replacement.
    assert masker.line("x \ufffd\ufffd-binary-token y") == f"x {MASK} y"
    assert Masker([]).chunk(b"a") == b"a"


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
