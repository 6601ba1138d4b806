"""Make tensorrt-stubs usable by mypy: copy its .pyi trees into build/typestubs (mypy_path).

The wheel installs `tensorrt/__init__.pyi` without py.typed (so mypy does not find it in
site-packages), and its generated signatures have a few Python syntax errors: parameters
named with the keyword `in`, and a parameter without a default after ones with defaults.
The copy renames `in` to `in_` and gives such parameters `= ...`; nothing else changes.
"""
import re
import shutil
import sys
import sysconfig
from pathlib import Path

site = Path(sysconfig.get_paths()["purelib"])
dest = Path(sys.argv[1] if len(sys.argv) > 1 else "build/typestubs")
if dest.exists():
    shutil.rmtree(dest)
for pkg in ("tensorrt", "tensorrt_bindings"):
    src = site / pkg
    if not (src / "__init__.pyi").is_file():
        raise SystemExit(f"{src}: tensorrt-stubs is not installed (make setup installs it)")
    for stub in src.rglob("*.pyi"):
        text = stub.read_text()
        text = re.sub(r"([(,]\s*)in(\s*:)", r"\1in_\2", text)

        def fix_defaults(m: re.Match) -> str:
            params, seen_default, out = m.group(2).split(", "), False, []
            for p in params:
                if "=" in p:
                    seen_default = True
                elif seen_default and ":" in p and not p.lstrip().startswith("*"):
                    p += " = ..."
                out.append(p)
            return m.group(1) + ", ".join(out) + m.group(3)
        text = re.sub(r"^(\s*def \w+\()([^\n]*)(\)\s*->[^\n]*:)$", fix_defaults, text, flags=re.M)
        target = dest / pkg / stub.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
print(f"tensorrt type stubs -> {dest}")
