"""The apps depend one way (docs/architecture.md), as the import-linter contract in pyproject.toml says."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env={"PYTHONPATH": str(cwd), "PATH": str(LINT_IMPORTS.parent)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_project_keeps_its_dependency_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_the_contract_refuses_a_core_app_importing_one_above_it(tmp_path: Path) -> None:
    # The project's own contract, over a tree whose carriers import payments and whose payments import the sandbox.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    for package in config["root_packages"]:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "carriers" / "gateway.py").write_text("from payments import models\n")
    (tmp_path / "payments" / "models.py").write_text("import sandbox.demo\n")
    (tmp_path / "sandbox" / "demo.py").write_text("")
    contracts = "".join(
        f'[[tool.importlinter.contracts]]\nname = "{c["name"]}"\ntype = "{c["type"]}"\nlayers = {c["layers"]!r}\n'
        for c in config["contracts"]
    ).replace("'", '"')
    (tmp_path / "pyproject.toml").write_text(
        f"[tool.importlinter]\nroot_packages = {config['root_packages']!r}\n".replace("'", '"') + contracts
    )

    result = lint_imports(tmp_path)

    assert result.returncode == 1
    assert "carriers is not allowed to import payments" in result.stdout
    assert "payments is not allowed to import sandbox" in result.stdout
