#!/usr/bin/env python3
"""Regenerates the code point range tables in data/unicode.cpp (between the BEGIN/END markers).

Classes follow the regex classes of the GPT-2 pre-tokenizer: letter = \\p{L} (Lu Ll Lt Lm Lo),
number = \\p{N} (Nd Nl No). Uses the `regex` module, which implements the same Unicode properties
as Oniguruma (used by Hugging Face tokenizers). Usage: python3 data/gen_unicode_tables.py
"""
import pathlib
import re
import regex

def ranges(prop):
    pat = regex.compile(r"\p{%s}" % prop)
    out, start, prev = [], None, None
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        if pat.match(chr(cp)):
            if start is None or cp != prev + 1:
                if start is not None:
                    out.append((start, prev))
                start = cp
            prev = cp
    out.append((start, prev))
    return out

def table(name, rs):
    rows = ["{0x%X, 0x%X}," % r for r in rs]
    lines, line = [], "   "
    for row in rows:
        if len(line) + len(row) + 1 > 100:
            lines.append(line)
            line = "   "
        line += " " + row
    lines.append(line)
    return "const CodeRange %s[] = {\n%s\n};\n" % (name, "\n".join(lines))

src = pathlib.Path(__file__).with_name("unicode.cpp")
text = src.read_text()
body = "// BEGIN generated tables (python regex module %s)\n" % regex.__version__
body += table("kLetters", ranges("L")) + table("kNumbers", ranges("N")) + "// END generated tables"
text = re.sub(r"// BEGIN generated tables.*?// END generated tables", lambda _: body, text, flags=re.S)
src.write_text(text)
