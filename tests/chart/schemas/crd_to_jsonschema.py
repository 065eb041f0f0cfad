"""A CustomResourceDefinition's openAPIV3Schema as a JSON Schema (draft-07) file, to validate
rendered custom resources offline (the chart tests' CRD-backed objects, e.g. KEDA's
ScaledObject).

    python tests/chart/schemas/crd_to_jsonschema.py CRD.yaml VERSION "SOURCE" > OUT.json

SOURCE is recorded in the output's "$comment" (repository, file path, release and commit).
The conversion:

* every ``x-kubernetes-*`` extension is dropped: ``x-kubernetes-int-or-string`` fields already
  carry ``anyOf: [integer, string]``; the ``x-kubernetes-validations`` CEL rules have no JSON
  Schema form and are listed in "$comment" (a test checks what the chart relies on by hand);
* an object with ``properties`` and no ``additionalProperties`` gets
  ``additionalProperties: false``: the API server prunes unknown fields of a structural
  schema, and strict field validation (kubectl's default) refuses them;
* a ``pattern`` whose inline flags follow the anchor (Go's ``^(?i)...``, prometheus-operator's
  ``partial_response_strategy``) gets them moved to the front (``(?i)^...``): the same regex,
  in the form Python's ``re`` (and so jsonschema) accepts;
* everything else (types, enums, patterns, minimums, required, descriptions) is kept as is.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import yaml


def convert(node: Any, rules: list[str], where: str = "") -> Any:
    """The JSON Schema of one openAPIV3Schema node; CEL rules found are appended to rules."""
    if isinstance(node, list):
        return [convert(item, rules, where) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "x-kubernetes-validations":
            rules += [f"{where or '.'}: {v['rule']} ({v.get('message', '')})" for v in value]
        elif key.startswith("x-kubernetes-"):
            continue
        elif key == "properties":
            out[key] = {k: convert(v, rules, f"{where}.{k}") for k, v in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"):
            out[key] = convert(value, rules, f"{where}[]" if key == "items" else where)
        elif key == "pattern" and isinstance(value, str):
            out[key] = re.sub(r"^\^(\(\?[a-zA-Z]+\))", r"\1^", value)
        else:
            out[key] = value
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def crd_schema(crd: dict[str, Any], version: str, source: str) -> dict[str, Any]:
    """The JSON Schema of ``version`` of a CRD; source says where the CRD came from."""
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    rules: list[str] = []
    body = convert(served["schema"]["openAPIV3Schema"], rules)
    names = crd["spec"]["names"]
    comment = (
        f"{names['kind']} {crd['spec']['group']}/{version}: the openAPIV3Schema of {source}, "
        f"converted by tests/chart/schemas/crd_to_jsonschema.py (x-kubernetes-* extensions "
        f"dropped; objects with properties closed with additionalProperties: false)."
    )
    if rules:
        comment += " CEL rules not expressed here: " + "; ".join(rules)
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": comment,
        "title": f"{names['kind']} ({crd['spec']['group']}/{version})",
        **body,
    }


def main(argv: list[str]) -> int:
    path, version, source = argv
    with open(path) as f:
        crd = yaml.safe_load(f)
    json.dump(crd_schema(crd, version, source), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
