"""MkDocs hook: serve MathJax from the site itself, so that formulas render with no network.

MathJax 3 comes from the PyPI package ``django-static-mathjax`` (the ``docs`` extra; despite
its name it needs no Django, it is MathJax's release tree as package data). The hook adds
the parts of it that the TeX-to-CommonHTML bundle loads to the build under ``assets/mathjax/``:
the bundle itself, its fonts, and the extensions it autoloads on demand (``\\require``,
the menu's renderers and explorer). ``mkdocs.yml`` loads ``javascripts/mathjax-config.js``
and then ``assets/mathjax/tex-chtml.js``.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

#: where the MathJax files land in the site (mkdocs.yml's extra_javascript names the bundle under it)
SITE_DIR = "assets/mathjax"
#: the bundle, then the folders it loads components and fonts from, relative to the bundle
BUNDLE = "tex-chtml.js"
COMPONENT_DIRS = ("a11y", "adaptors", "input", "output", "sre", "ui")


def mathjax_root() -> Path:
    """The directory of MathJax's ES5 components in the installed ``django-static-mathjax``.

    Raises:
        PluginError: the package is not installed, or lacks the bundle.
    """
    from mkdocs.exceptions import PluginError

    try:
        root = Path(str(resources.files("mathjax") / "static" / "mathjax" / "es5"))
    except ModuleNotFoundError:
        root = None
    if root is None or not (root / BUNDLE).is_file():
        raise PluginError("MathJax not found: the docs need the package django-static-mathjax "
                          "(pip install -e '.[docs]')")
    return root


def on_files(files, config):
    """Add MathJax's bundle and the components it loads to the site's files."""
    from mkdocs.structure.files import File

    root = mathjax_root()
    sources = [root / BUNDLE] + sorted(p for d in COMPONENT_DIRS for p in (root / d).rglob("*") if p.is_file())
    for source in sources:
        files.append(File.generated(config, f"{SITE_DIR}/{source.relative_to(root).as_posix()}",
                                    abs_src_path=str(source)))
    return files
