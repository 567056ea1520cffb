"""The query-string reader against the standard library it replaces."""

from __future__ import annotations

from urllib.parse import parse_qsl

from hypothesis import given
from hypothesis import strategies as st

from queue_service.api.params import query_pairs

#: Bytes that matter to query parsing, plus some that do not.
_INTERESTING = st.sampled_from(
    [b"&", b"=", b"+", b"%", b"%2", b"%41", b"%e2%82%ac", b"%zz", b"%ff", b"a", b"Z", b" ",
     b";", b"\xc3\xa9", b"\xff", b"%00", b"%26", b"%3D", b"%2B"]
)  # fmt: skip


@given(st.lists(st.one_of(_INTERESTING, st.binary(max_size=3)), max_size=12).map(b"".join))
def test_query_pairs_read_what_starlette_reads(query_string: bytes) -> None:
    """Starlette's QueryParams decode the raw bytes as latin-1, then parse_qsl them keeping
    blank values; the handlers have always seen exactly that."""
    expected = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    assert query_pairs(query_string) == expected
