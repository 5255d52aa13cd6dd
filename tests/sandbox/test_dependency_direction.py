"""The sandbox depends on the core apps, never the other way round."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE_APPS = ["carriers", "payments", "funnel", "journal", "reporting", "playpay"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_no_core_app_imports_the_sandbox() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {module}"
        for app in CORE_APPS
        for path in sorted((ROOT / app).rglob("*.py"))
        for module in sorted(imported_modules(path))
        if module == "sandbox" or module.startswith("sandbox.")
    ]
    assert offenders == []


def test_the_check_sees_imports_of_the_sandbox(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import sandbox.demo\nfrom sandbox.adapter import TEST_PIN\n\ndef f():\n    from sandbox import urls\n"
    )
    assert imported_modules(module) == {"sandbox.demo", "sandbox.adapter", "sandbox"}
