"""For tests that edit a ticket file's header on purpose: keep its header CRC right,
so that the check under test (not the CRC) is the one that fires."""
from lthfast.ticket import _file


def reseal(header: dict) -> dict:
    md = header.get("__metadata__")
    if isinstance(md, dict) and "header_crc32" in md:
        md["header_crc32"] = str(_file._header_crc(header))
    return header
