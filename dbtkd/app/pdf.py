"""A one-page PDF of text lines, written by hand (PDF 1.4, the built-in Helvetica font).

The analytics report (UI-CONTRACT §8.7) needs "any valid PDF": a title and lines of text. A
PDF library would cost megabytes of the frozen bundle for that, so this module writes the few
objects a text page needs, with a correct cross-reference table. Text outside Latin-1 is
replaced by ``?`` (the standard fonts have no other glyphs).
"""

from __future__ import annotations

PAGE_WIDTH, PAGE_HEIGHT = 595, 842  # A4 in points
MARGIN = 50
TITLE_SIZE, TEXT_SIZE = 16, 9
LEADING = 12
MAX_LINES = (PAGE_HEIGHT - 2 * MARGIN - 30) // LEADING


def _escape(text: str) -> str:
    latin = text.encode("latin-1", "replace").decode("latin-1")
    return latin.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def text_pdf(title: str, lines: list[str]) -> bytes:
    """A PDF document: ``title`` in bold, then ``lines`` (cut to what one page holds)."""
    shown = lines[:MAX_LINES]
    y = PAGE_HEIGHT - MARGIN
    parts = [f"BT /F2 {TITLE_SIZE} Tf {MARGIN} {y} Td ({_escape(title)}) Tj ET"]
    y -= 30
    parts.append(f"BT /F1 {TEXT_SIZE} Tf {LEADING} TL {MARGIN} {y} Td")
    parts.extend(f"({_escape(line)}) Tj T*" for line in shown)
    parts.append("ET")
    stream = "\n".join(parts).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_WIDTH} {PAGE_HEIGHT}] "
            "/Resources << /Font << /F1 5 0 R /F2 6 0 R >> >> /Contents 4 0 R >>"
        ).encode(),
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
