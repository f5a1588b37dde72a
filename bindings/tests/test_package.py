import pathlib
import re

import walbrook


def test_version_matches_the_workspace_version():
    cargo = pathlib.Path(__file__).resolve().parents[2] / "Cargo.toml"
    match = re.search(r'^version = "([^"]+)"', cargo.read_text(), re.MULTILINE)
    assert match is not None
    assert walbrook.__version__ == match.group(1)


def test_native_module_is_the_compiled_extension():
    from walbrook import _walbrook

    assert pathlib.Path(_walbrook.__file__).suffix in {".so", ".pyd"}
