"""The folders are the architecture: each package imports only the packages below it, read from the code itself
(every `import` and `from ... import`, at module level or inside a function)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aa_runtime", "aa_world", "aa_export", "aa_train", "aa_studio", "benchmarks", "examples")
# what each package may import of the project: runtime at the bottom; world and export over it; the trainer over
# runtime and world; benchmarks and examples over everything
ALLOWED = {
    "aa_runtime": set(),
    "aa_world": {"aa_runtime"},
    "aa_export": {"aa_runtime"},
    "aa_train": {"aa_runtime", "aa_world"},
    "aa_studio": {"aa_runtime", "aa_world", "aa_train"},  # the page over the library: nothing imports it
    "benchmarks": {"aa_runtime", "aa_world", "aa_export", "aa_train"},
    "examples": {"aa_runtime", "aa_world", "aa_export", "aa_train", "aa_studio", "benchmarks"},
}


def project_imports(path: Path) -> set[str]:
    """The project packages that one source file imports (relative imports stay inside its own package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names} & set(PACKAGES)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_lies_below_it(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no source files"
    wrong = {f"{f.relative_to(ROOT)} → {', '.join(sorted(bad))}"
             for f in files if (bad := project_imports(f) - ALLOWED[package] - {package})}
    assert not wrong, "imports against the layout:\n" + "\n".join(sorted(wrong))


def test_every_package_folder_is_its_import_name():
    import setuptools  # noqa: F401  (setup.py is read, not run)

    tree = ast.parse((ROOT / "setup.py").read_text())
    keywords = {k.arg: k.value for node in ast.walk(tree) if isinstance(node, ast.Call)
                for k in node.keywords if k.arg in ("packages", "package_dir")}
    assert "package_dir" not in keywords, "setup.py maps a package to a folder of another name"
    packages = {ast.literal_eval(e) for e in keywords["packages"].elts}
    for name in packages:
        assert (ROOT / name / "__init__.py").is_file(), f"package {name} has no folder {name}/"


def test_the_checker_sees_function_level_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\nfrom . import x\n\ndef f():\n    from aa_train.identity import train_identity\n"
                   "    import aa_world.judge\n")
    assert project_imports(src) == {"aa_train", "aa_world"}
