"""Rewrite the code deps of every stage in dvc.yaml: its script and the repository modules it imports
(drllm_core.provenance.import_closure), keeping the data deps and everything else as they are.

    python scripts/update_dvc_deps.py      # after adding or removing an import; tests/unit/test_dvc_graph.py checks it
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from ruamel.yaml import YAML

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from drllm_core.provenance import ROOT, import_closure


def main() -> None:
    yaml = YAML()
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)  # dvc.yaml's own layout
    path = ROOT / "dvc.yaml"
    document = yaml.load(path.read_text())
    for name, stage in document["stages"].items():
        body = stage.get("do", stage)
        module = body["cmd"].split("python -m ", 1)[1].split()[0]
        code = [p.relative_to(ROOT).as_posix() for p in import_closure([module])]
        deps = body["deps"]
        for index in reversed(range(len(deps))):  # data deps (and their comments) stay where they are
            if str(deps[index]).endswith(".py"):
                del deps[index]
        for index, module_path in enumerate(code):
            deps.insert(index, module_path)
        print(f"{name}: {len(code)} modules")
    out = io.StringIO()
    yaml.dump(document, out)
    path.write_text(out.getvalue())


if __name__ == "__main__":
    main()
