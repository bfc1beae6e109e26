import subprocess
import sys

import veil.privacy


def test_privacy_imports_no_training_or_web_stack() -> None:
    code = (
        "import sys, veil.privacy; "
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in {'torch', 'fastapi', 'sqlalchemy', 'starlette', 'opacus'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_every_public_name_is_exported() -> None:
    for name in veil.privacy.__all__:
        assert getattr(veil.privacy, name) is not None
