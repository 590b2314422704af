"""The API reference: docs/API.md is what docs/gen_api.py makes of the docstrings now, every
public name has a numpydoc docstring, and nothing points users at the old internal contract
(an API.md outside the repository)."""
import importlib.util
import inspect
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API_MD = os.path.join(ROOT, "docs", "API.md")
HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("seqcore_gen_api",
                                                  os.path.join(ROOT, "docs", "gen_api.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def groups(gen):
    return gen.render_groups()


def _section(doc, name):
    """Whether a numpydoc docstring has the section `name` (a title underlined with dashes)."""
    return re.search(rf"^{name}\n-{{{len(name)}}}$", inspect.cleandoc(doc or ""), re.M) is not None


def test_api_md_is_what_gen_api_makes_now(gen, groups):
    with open(API_MD, encoding="utf-8") as f:
        page = f.read()
    _, have = gen.split(page)
    assert [m for m, _ in have] == [m for m, _ in gen.GROUPS], \
        "docs/API.md lacks groups or has them out of order: run python docs/gen_api.py"
    stale = gen.stale_groups(page, groups)
    assert not stale, (f"docs/API.md is out of date in {', '.join(stale)}: a public signature "
                       "or docstring changed; run python docs/gen_api.py and commit the result")


def test_api_md_without_torch_still_compares_the_rest(gen, groups):
    """The groups that need torch are left out of the comparison, not failed, without it."""
    by_module = dict(groups)
    assert by_module["seqcore"] is not None and by_module["seqcore.reference"] is not None
    if not HAS_TORCH:
        assert by_module["seqcore.nn"] is None and by_module["seqcore.distributed"] is None


def test_gen_api_sections_are_complete_and_ordered(gen, groups):
    import seqcore

    text = dict(groups)["seqcore"]
    titles = re.findall(r"^### (\S+)$", text, re.M)
    assert titles == [f"seqcore.{n}" for n in gen.public_names("seqcore")]
    assert "seqcore.attention" in titles and "seqcore.nn" not in titles
    for name in titles:  # signature and docstring of each
        obj = getattr(seqcore, name.split(".", 1)[1])
        section = text.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        assert inspect.cleandoc(obj.__doc__) in section
        assert section.lstrip().startswith(f"```python\n{name}(")


def test_every_public_function_has_a_numpydoc_docstring(gen):
    import seqcore

    missing = []
    for name in gen.public_names("seqcore"):
        obj = getattr(seqcore, name)
        # a function that takes nothing has no Parameters section in numpydoc: Returns then
        want = "Parameters" if inspect.signature(obj).parameters else "Returns"
        if not _section(obj.__doc__, want):
            missing.append(f"seqcore.{name} ({want})")
    assert not missing, "public names without a numpydoc section: " + ", ".join(missing)


@pytest.mark.skipif(not HAS_TORCH, reason="seqcore.nn needs torch")
def test_every_nn_class_documents_its_parameters():
    import seqcore.nn

    missing = [name for name in seqcore.nn.__all__
               if not _section(getattr(seqcore.nn, name).__doc__, "Parameters")]
    assert not missing, ("seqcore.nn classes without a Parameters section in the class "
                         "docstring: " + ", ".join(missing))


def _user_facing_files():
    """What a user reads: the package's sources (docstrings included), the Triton kernels
    installed with it, the docs, README and the package metadata."""
    for top in ("seqcore", "kernels", "docs"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, top)):
            for name in sorted(names):
                if name.endswith((".py", ".md", ".txt", ".rst")):
                    yield os.path.join(dirpath, name)
    for name in ("README.md", "pyproject.toml", "setup.py"):
        if os.path.exists(os.path.join(ROOT, name)):
            yield os.path.join(ROOT, name)


# "API.md" is allowed only as docs/API.md, this repository's generated reference
_OLD_CONTRACT = re.compile(r"(?<!docs/)\bAPI\.md\b")


def test_nothing_points_at_the_old_api_contract():
    found = []
    for path in _user_facing_files():
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if _OLD_CONTRACT.search(line):
                    found.append(f"{os.path.relpath(path, ROOT)}:{lineno}: {line.strip()}")
    assert not found, ("pointers to an API.md users do not have (the reference is each "
                       "docstring, collected in docs/API.md):\n" + "\n".join(found))


def test_the_old_contract_check_allows_the_generated_page():
    assert not _OLD_CONTRACT.search("collected in docs/API.md by docs/gen_api.py")
    assert _OLD_CONTRACT.search("see API.md")
    assert _OLD_CONTRACT.search("the contract is ../shared/API.md")


def test_package_metadata_keeps_the_version_in_one_place():
    tomllib = pytest.importorskip("tomllib")  # (Python 3.11+)
    import seqcore

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        config = tomllib.load(f)
    project = config["project"]
    assert project["name"] == "seqcore-kernels"  # "seqcore" on PyPI is another project
    assert "version" not in project and "version" in project["dynamic"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "seqcore.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|rc\d+)?", seqcore.__version__)
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["seqcore"]
    assert os.path.exists(os.path.join(ROOT, "seqcore", "py.typed"))
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        assert "Copyright (c) 2026 the seqcore authors" in f.read()
