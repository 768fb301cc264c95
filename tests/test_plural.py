"""`counted`: the count and its noun, singular for exactly one; `verb`: the verb that agrees with it."""

from facerestore.plural import counted, verb


def test_one_is_singular_and_every_other_count_plural():
    assert [counted(n, "face") for n in (0, 1, 2)] == ["0 faces", "1 face", "2 faces"]
    assert counted(1, "held-out face") == "1 held-out face" and counted(3, "held-out face") == "3 held-out faces"
    assert counted(2, "index", "indices") == "2 indices" and counted(1, "index", "indices") == "1 index"


def test_the_verb_agrees_with_the_count():
    assert [verb(n, "is", "are") for n in (0, 1, 2)] == ["are", "is", "are"]
    assert f"{counted(1, 'face')} {verb(1, 'was', 'were')} replaced" == "1 face was replaced"
    assert f"{counted(3, 'face')} {verb(3, 'gets', 'get')} none" == "3 faces get none"


def test_the_substitution_line_agrees_with_its_count(tmp_path):
    from facerestore.training.data import substitution_warning

    assert substitution_warning(1, tmp_path / "log.jsonl").startswith("warning: 1 sample came from a file that could not be read and was replaced")
    assert substitution_warning(2, tmp_path / "log.jsonl", "fine-tuning sample").startswith(
        "warning: 2 fine-tuning samples came from a file that could not be read and were replaced")
    assert substitution_warning(3, tmp_path / "log.jsonl", files=["a.png"]).endswith("; re-export or remove it")
    assert "came from 2 files that could not be read (a.png and 1 more) and were replaced" in substitution_warning(3, tmp_path / "log.jsonl", files=["a.png", "b.png"])
