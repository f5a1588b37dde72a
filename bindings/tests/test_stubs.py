"""The typed stubs describe the native module as it is (no missing or stale names)."""

import ast
import pathlib

import walbrook
from walbrook import _walbrook

STUBS = pathlib.Path(walbrook.__file__).with_name("_walbrook.pyi")


def stub_classes():
    tree = ast.parse(STUBS.read_text())
    classes = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = {
                item.name for item in node.body if isinstance(item, ast.FunctionDef)
            }
    return classes


def test_stubs_match_the_native_module():
    stubs = stub_classes()
    native = {
        name for name in dir(_walbrook)
        if isinstance(getattr(_walbrook, name), type) and name != "Completion"
    }
    assert native == set(stubs), (native, set(stubs))
    for name in native:
        cls = getattr(_walbrook, name)
        public = {
            attr for attr in vars(cls)
            if not attr.startswith("_") or attr in {
                "__iter__", "__next__", "__aiter__", "__anext__", "__enter__", "__exit__",
                "__aenter__", "__aexit__", "__init__",
            }
        }
        missing = public - stubs[name] - {"__init__"}
        assert not missing, f"{name}: not in the stubs: {missing}"
        stale = stubs[name] - public - {"__init__"}
        assert not stale, f"{name}: in the stubs only: {stale}"
    assert (STUBS.parent / "py.typed").exists()
    for name in walbrook.__all__:
        assert hasattr(walbrook, name), name
