"""Code and documentation pairs from a Python tree the test writes, and from one real package."""

import json
import os
import textwrap

import pytest

from embed_jax.data import code_corpus, stdlib_corpus

MODULE = '''\
"""A module about shapes.

It computes the areas of many kinds of shapes, squares and circles included.

Each function takes sizes in metres and returns square metres as a float.
"""


def area(side):
    """Return the area of a square with the given side.

    More detail here.
    """
    return side * side


async def fetch(url):
    """Fetch the url asynchronously and return its body."""
    return await get(url)


class Circle:
    def area(self):
        """Area of the circle in square metres."""
        def helper(r):
            """Square the radius for the area formula."""
            return r * r
        return 3.14 * helper(self.r)

    def short(self):
        """Too short."""
        return 1
'''


def write(root, rel, text):
  path = os.path.join(root, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def read_corpus(folder, corpus):
  return [json.loads(line) for split in stdlib_corpus.SPLITS
          for line in open(os.path.join(folder, corpus, f"{split}.jsonl"), encoding="utf-8")]


@pytest.fixture
def tree(tmp_path):
  root = str(tmp_path / "site")
  write(root, "shapes/geometry.py", MODULE)
  write(root, "shapes/zz_copy.py", MODULE)  # Exact duplicates: dropped.
  write(root, "shapes/broken.py", "def f(:\n")
  for excluded in ("shapes/tests/helpers.py", "shapes/test_geometry.py", "shapes/geometry_test.py",
                   "conftest.py", "numpy/core.py", "scipy/linalg/basic.py", "numpy.libs/x.py",
                   "jax/numpy/lax.py"):
    write(root, excluded, MODULE.replace("square", "excluded square"))
  write(root, "shapes-1.0.dist-info/METADATA", textwrap.dedent("""\
      Metadata-Version: 2.1
      Name: shapes

      Shapes is a package that computes areas of many shapes for you quickly.

      Install it with pip and then call the functions of its geometry module directly.
      """))
  write(root, "numpy-2.0.dist-info/METADATA",
        "Name: numpy\n\nNumPy is the fundamental package for array computing in Python.\n\n"
        "It provides a powerful n-dimensional array object and many functions besides.\n")
  return root


def test_pairs_from_a_tree_skip_tests_numpy_scipy_and_duplicates(tree, tmp_path):
  out = str(tmp_path / "out")
  summary = code_corpus.extract_to(out, [(tree, "site")], site_dirs=[tree], processes=1)
  code = read_corpus(out, "python_code")
  got = {p["name"]: p for p in code}
  assert sorted(got) == ["Circle.area", "Circle.area.helper", "area", "fetch"]
  assert got["area"]["x"] == "Return the area of a square with the given side."
  assert got["area"]["y"] == "def area(side):\n    return side * side"
  assert got["fetch"]["y"].startswith("async def fetch(url):")
  assert all(p["doc"] == "site/shapes/geometry.py" for p in code)
  assert not any("excluded" in p["x"] for p in code)
  assert summary["files"] == 3 and summary["unparsable_files"] == 1
  assert summary["duplicates_dropped"]["python_code"] == 4
  docs = read_corpus(out, "python_docs")
  assert {p["doc"] for p in docs} == {"site/shapes/geometry.py", "metadata/shapes"}
  assert ("It computes the areas of many kinds of shapes, squares and circles included.",
          "Each function takes sizes in metres and returns square metres as a float.") in {
              (p["x"], p["y"]) for p in docs}
  # A document's pairs share one split, and the result does not depend on the pool.
  assert len({stdlib_corpus.split_of(p["doc"]) for p in code}) == 1
  again = str(tmp_path / "again")
  code_corpus.extract_to(again, [(tree, "site")], site_dirs=[tree], processes=2)
  assert read_corpus(again, "python_code") == code


def test_one_real_installed_package():
  out_trees = code_corpus.package_trees(["gin"])
  import tempfile  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as out:
    summary = code_corpus.extract_to(out, out_trees, processes=1)
    code = read_corpus(out, "python_code")
  assert summary["files"] > 5 and len(code) > 50
  assert all(p["doc"].startswith("gin/") and p["y"].lstrip().startswith(("def ", "async def ", "@"))
             for p in code)


def test_reserved_and_missing_packages_are_refused():
  with pytest.raises(code_corpus.CorpusError, match="reserved for held-out evaluation"):
    code_corpus.package_trees(["numpy"])
  with pytest.raises(code_corpus.CorpusError, match="not installed"):
    code_corpus.package_trees(["surely_not_an_installed_package"])
  with pytest.raises(code_corpus.CorpusError, match="not a folder"):
    code_corpus.python_files("/nonexistent/tree")


def test_decontaminated_when_written(tree, tmp_path):
  out = str(tmp_path / "out")
  code_corpus.extract_to(out, [(tree, "site")], site_dirs=[tree], processes=1)
  data = tmp_path / "eval" / "stsb"
  data.mkdir(parents=True)
  (data / "sts-test.csv").write_text(
      "g\tg\tg\t1\t1.0\tFetch the url asynchronously and return its body.\tunrelated words\n")
  report = code_corpus.decontaminate_folder(out, str(tmp_path / "eval"))
  names = [p["name"] for p in read_corpus(out, "python_code")]
  assert "fetch" not in names and len(names) == 3
  assert sum(r["dropped"] for k, r in report.items() if k.startswith("python_code/")) == 1
