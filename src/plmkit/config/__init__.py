"""Typed configs: YAML + dotted `key=value` overrides -> (nested) dataclasses, with errors that name the key.

convert   from_dict / to_dict / apply_overrides / load_config / check_fields
fields    the type vocabulary: Range (declared value ranges), UNSET, the one error wording
yaml_io   YAML 1.2 reading (1e-3 is a float, yes/no stay strings, duplicate keys are errors)
"""

from plmkit.config.convert import (
    apply_overrides,
    check_fields,
    from_dict,
    load_config,
    parse_override,
    to_dict,
)
from plmkit.config.fields import UNSET, Range
from plmkit.config.yaml_io import load_yaml

__all__ = [
    "UNSET",
    "Range",
    "apply_overrides",
    "check_fields",
    "from_dict",
    "load_config",
    "load_yaml",
    "parse_override",
    "to_dict",
]
