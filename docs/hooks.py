"""mkdocs hooks (``hooks:`` in mkdocs.yml).

The docstrings are written for both ``help()`` and the site: they use reStructuredText roles
(``:class:`~xfm.fusion.XFMConfig```), which Markdown renders as the role name followed by the
code span. This strips the role name and the ``~`` shortening marker, leaving the code span.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc|const|py:\w+):(<code>)~?")


def on_page_content(html: str, **kwargs: Any) -> str:
    """Drop ``:class:``-style role prefixes in front of code spans."""
    return _ROLE.sub(r"\1", html)
