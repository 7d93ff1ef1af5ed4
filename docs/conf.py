"""Sphinx configuration of fastnn's documentation: a user guide made of README.md's
sections (included, so the two never drift apart) and an API reference from the
docstrings. Build: pip install '.[docs]' && sphinx-build docs docs/_build/html"""

import os
import sys

# document the fastnn of this checkout (its compiled `c` backend included when built in place)
sys.path.insert(0, os.path.abspath(".."))

import fastnn  # noqa: E402

project = "fastnn"
author = "fastnn contributors"
release = version = fastnn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
# the README's sections are included: their headings start below the guide page's title
suppress_warnings = ["myst.header"]

# `name` in a docstring links to the object when Sphinx knows it, else is set in code font
default_role = "py:obj"

autodoc_member_order = "bysource"
# signatures show defaults as written (np.float32), not their repr
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": True}
# numpydoc lists the members itself from autodoc's entries: no second table of them
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# numpydoc's checks of every docstring the reference shows (a failure is a warning, so an error of
# the -W build in tests/test_docs.py), all but: ES01 (an extended summary), SA01 (See Also), EX01
# (Examples) and GL08 (a docstring of its own), which tests/test_docs.py requires of the exported
# functions and classes only: a method that overrides a documented one (Dense.config) is shown
# with the base's docstring, which is validated where it is written
numpydoc_validation_checks = {"all", "ES01", "SA01", "EX01", "GL08"}
numpydoc_validation_exclude = {
    # the kernels: made from their declarations in fastnn/backends/spec.py, plain text shown verbatim
    # (see kernel_docstring_verbatim below)
    r"^fastnn\.backends\.NumpyBackend\.",
    # a named tuple's fields (autodoc gives each the docstring "Alias for field number n"), a constant
    r"^fastnn\.testing\.TensorCheck\.",
    r"^fastnn\.testing\.RTOL$",
    # the estimators' methods: scikit-learn's, with its docstrings
    r"^fastnn\.MLP(Classifier|Regressor)\.",
}

html_theme = "alabaster"
html_static_path = []


def public_members_directive():
    """`.. public-members:: fastnn.nn` with ``:defined-in: fastnn.nn.layers``: autodoc entries
    for the names of the module's ``__all__`` defined in that submodule, in ``__all__``'s
    order, so a page section lists what the package exports without a second list to keep."""
    import importlib
    import inspect

    from docutils import nodes
    from docutils.parsers.rst import directives
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective
    from sphinx.util.nodes import nested_parse_with_titles

    class PublicMembers(SphinxDirective):
        required_arguments = 1
        option_spec = {"defined-in": directives.unchanged_required}

        def run(self):
            package = importlib.import_module(self.arguments[0])
            where = self.options["defined-in"]
            lines = []
            for name in package.__all__:
                obj = getattr(package, name)
                if getattr(obj, "__module__", None) != where:
                    continue
                if inspect.isclass(obj):
                    kind = "autoexception" if issubclass(obj, BaseException) else "autoclass"
                elif callable(obj):
                    kind = "autofunction"
                else:
                    continue
                lines += [f".. {kind}:: {package.__name__}.{name}", ""]
            if not lines:
                raise self.error(f"{package.__name__}.__all__ has no class or function from {where}")
            node = nodes.section()
            nested_parse_with_titles(self.state, StringList(lines, self.get_source_info()[0]), node)
            return node.children

    return PublicMembers


def kernel_docstring_verbatim(app, what, name, obj, options, lines):
    """The kernels' docstrings (declared in fastnn/backends/spec.py) are plain text with
    formulas and shapes such as ``|d|`` and ``(N, *shape)``: shown as written, in a
    literal block (numpydoc's closing comment, if any, kept after it)."""
    if not name.startswith("fastnn.backends.NumpyBackend.") or not any(lines):
        return
    end = lines.index("..") if ".." in lines else len(lines)
    text = "\n".join(lines[:end]).strip("\n").splitlines()
    lines[:end] = ["::", ""] + ["    " + line if line else "" for line in text] + [""]


def setup(app):
    app.add_directive("public-members", public_members_directive())
    # after numpydoc (priority 500), which re-indents what it reads
    app.connect("autodoc-process-docstring", kernel_docstring_verbatim, priority=600)
