"""Sphinx configuration of the PVC manual.

The build is offline and strict: warnings are errors (``-W`` in the test that builds it), every cross-reference
must resolve (``nitpicky``), Python's own objects resolve against the inventory Debian's ``python3-doc`` ships,
and no link is checked. The references (settings, cluster config, CLI, hooks, remote methods) are generated from
the code by the ``pvc_docs`` extension in ``_ext``, so they cannot drift from it.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "PVC"
author = "the PVC authors"
copyright = "the PVC authors, GPL-3.0-or-later"

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.intersphinx", "pvc_docs"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "examples/pvc-example-plugin/*.egg-info", "examples/**/build"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

nitpicky = True
PYTHON_INVENTORY = "/usr/share/doc/python3.11/html/objects.inv"
"""Installed by Debian's python3-doc (contrib/setup.sh); read locally, never fetched."""
intersphinx_mapping = {"python": ("https://docs.python.org/3.11", PYTHON_INVENTORY)}
intersphinx_timeout = 1
nitpick_ignore: list[tuple[str, str]] = []
"""Reviewed: empty. Every reference resolves, PVC's own against the manual and Python's against the local
inventory; a third-party type that cannot (no Debian inventory) is added here with the reason."""

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_class_signature = "separated"
autodoc_default_options = {"exclude-members": "__init__, __new__"}
python_use_unqualified_type_names = True

smartquotes = False
"""Option spellings such as --node-limit must stay as typed."""

html_theme = "alabaster"
html_title = "PVC manual"
html_static_path = []
