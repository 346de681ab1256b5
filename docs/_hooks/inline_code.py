"""MkDocs hook: a short inline code token (a flag, a file name, a config key) never breaks across lines.

Browsers may break a line after any hyphen, so ``--version`` at the end of a line showed as
``-`` / ``-version`` and ``pretrain_curve.png`` in a narrow table cell lost its last letter to
the next line. CSS alone cannot forbid a break after a hyphen but allow one at a space, so this
hook gives every inline ``<code>`` without a space (and at most :data:`MAX_CHARS` characters of
HTML) the class ``nowrap``, which ``docs/stylesheets/extra.css`` keeps on one line. Longer
tokens, inline commands with spaces and code blocks (``<pre>``) wrap as before.
"""

from __future__ import annotations

import re

#: The longest token (in HTML characters) kept on one line: about 40 monospace characters fit
#: even an 800-px window's column many times over.
MAX_CHARS = 40

# inline code as Markdown renders it: <code>, no attributes, text without spaces or tags
_SHORT_INLINE_CODE = re.compile(rf"<code>([^<>\s]{{1,{MAX_CHARS}}})</code>")


def nowrap_inline_code(html: str) -> str:
    """``html`` with each short inline ``<code>`` token marked ``class="nowrap"``.

    Example:
        >>> nowrap_inline_code("<p>Run <code>--version</code> or <code>make demo</code>.</p>")
        '<p>Run <code class="nowrap">--version</code> or <code>make demo</code>.</p>'
    """
    return _SHORT_INLINE_CODE.sub(r'<code class="nowrap">\1</code>', html)


def on_page_content(html: str, **kwargs) -> str:
    """MkDocs event: mark the page's short inline code tokens."""
    return nowrap_inline_code(html)
