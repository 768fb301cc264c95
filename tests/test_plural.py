"""`counted`: the count and its noun, singular for exactly one."""

from facerestore.plural import counted


def test_one_is_singular_and_every_other_count_plural():
    assert [counted(n, "face") for n in (0, 1, 2)] == ["0 faces", "1 face", "2 faces"]
    assert counted(1, "held-out face") == "1 held-out face" and counted(3, "held-out face") == "3 held-out faces"
    assert counted(2, "index", "indices") == "2 indices" and counted(1, "index", "indices") == "1 index"
