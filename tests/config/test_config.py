"""plmkit.config: dataclasses from YAML + dotted overrides, with errors that name the key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from plmkit.config import apply_overrides, from_dict, load_config, parse_override, to_dict
from plmkit.config.fields import Range
from plmkit.config.yaml_io import load_yaml
from plmkit.errors import ConfigError, DataError


# Module level: get_type_hints resolves the string annotations (`from __future__ import annotations`)
# in this module's namespace.
@dataclass
class ModelCfg:
    family: Literal["causal", "masked"] = "causal"
    n_layer: int = 2
    d_model: int = 32
    dropout: float = 0.0
    name: str = "tiny"


@dataclass
class OptimCfg:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0


@dataclass
class StageCfg:
    name: str  # required
    steps: int = 1


@dataclass
class RunCfg:
    model: ModelCfg = field(default_factory=ModelCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    stages: list[StageCfg] = field(default_factory=list)
    resume: str | None = None
    warmup: ModelCfg | None = None
    tags: dict[str, int] = field(default_factory=dict)
    out: Path = Path("runs/test")
    seed: int = 0
    compile: bool = False


# ---------------------------------------------------------------- from_dict / to_dict


def test_from_dict_builds_nested_dataclasses():
    cfg = from_dict(
        RunCfg,
        {
            "model": {"n_layer": 4, "family": "masked"},
            "optim": {"lr": 3e-4, "betas": [0.8, 0.9]},
            "stages": [{"name": "warm"}, {"name": "main", "steps": 10}],
            "warmup": {"d_model": 16},
            "tags": {"a": 1},
            "out": "runs/x",
        },
    )
    assert cfg.model == ModelCfg(family="masked", n_layer=4)
    assert cfg.optim.lr == 3e-4 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.stages == [StageCfg("warm"), StageCfg("main", 10)]
    assert cfg.warmup == ModelCfg(d_model=16)
    assert cfg.tags == {"a": 1}
    assert cfg.out == Path("runs/x")
    assert from_dict(RunCfg, {}) == RunCfg()


def test_int_is_accepted_for_float_and_integral_float_for_int():
    cfg = from_dict(RunCfg, {"optim": {"lr": 1}, "model": {"n_layer": 1e1}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.model.n_layer == 10 and isinstance(cfg.model.n_layer, int)


def test_unknown_key_suggests_the_closest_one():
    expected = r'unknown config key "model.n_layers" \(did you mean "model.n_layer"\?\)'
    with pytest.raises(ConfigError, match=expected):
        from_dict(RunCfg, {"model": {"n_layers": 4}})
    with pytest.raises(ConfigError, match=r'"warmup.dmodel" \(did you mean "warmup.d_model"\?\)'):
        from_dict(RunCfg, {"warmup": {"dmodel": 4}})  # inside an Optional dataclass too


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        from_dict(ModelCfg, {"zzz": 1})
    message = str(info.value)
    assert '"zzz"' in message and "valid keys: d_model, dropout, family, n_layer, name" in message


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"model": {"n_layer": "four"}}, "model.n_layer", "int"),
        ({"model": {"n_layer": True}}, "model.n_layer", "int"),  # a bool is not a number here
        ({"model": {"n_layer": 2.5}}, "model.n_layer", "int"),
        ({"optim": {"lr": "fast"}}, "optim.lr", "float"),
        ({"compile": "yes"}, "compile", "bool"),
        ({"stages": [{"name": "a"}, {"name": "b", "steps": "x"}]}, "stages[1].steps", "int"),
        ({"stages": {"name": "a"}}, "stages", "list[StageCfg]"),
        ({"optim": {"betas": [0.9]}}, "optim.betas", "tuple[float, float]"),
        ({"resume": 3}, "resume", "str | None"),
        ({"model": 3}, "model", "ModelCfg"),
        ({"tags": {"a": "one"}}, "tags.a", "int"),
    ],
)
def test_wrong_type_names_key_and_expected_type(data, key, expected):
    with pytest.raises(ConfigError) as info:
        from_dict(RunCfg, data)
    message = str(info.value)
    assert f'"{key}"' in message and expected in message


def test_literal_lists_choices_and_suggests():
    expected = r'^model.family="casual" is not one of causal, masked \(did you mean "causal"\?\)$'
    with pytest.raises(ConfigError, match=expected):
        from_dict(ModelCfg, {"family": "casual"}, path="model")


def test_declared_ranges_name_key_value_and_range():
    @dataclass
    class Optim:
        lr: Annotated[float, Range(gt=0)] = 1e-3
        dropout: Annotated[float, Range(ge=0, lt=1)] | None = None
        warmup: Annotated[int, Range(ge=0)] = 0

    assert from_dict(Optim, {"lr": 2, "dropout": 0.0, "warmup": 3}) == Optim(2.0, 0.0, 3)
    assert from_dict(Optim, {"dropout": None}).dropout is None
    with pytest.raises(ConfigError, match=r"^optim.lr=0 is out of range: must be > 0$"):
        from_dict(Optim, {"lr": 0}, path="optim")
    with pytest.raises(ConfigError, match=r"^dropout=1.0 is out of range: must be >= 0 and < 1$"):
        from_dict(Optim, {"dropout": 1.0})
    with pytest.raises(ConfigError, match=r"^warmup=-1 is out of range: must be >= 0$"):
        apply_overrides({}, ["warmup=-1"], Optim)  # named once, not as 'override "warmup=-1": warmup=-1'
    with pytest.raises(ConfigError, match=r"^lr=nan is out of range: must be > 0$"):
        from_dict(Optim, {"lr": float("nan")})  # nan compares false with every bound
    with pytest.raises(ConfigError, match=r"^lr=inf is out of range"):
        from_dict(Optim, {"lr": float("inf")})


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match=r'missing required config key "stages\[0\].name"'):
        from_dict(RunCfg, {"stages": [{"steps": 3}]})


def test_top_level_must_be_a_mapping():
    with pytest.raises(ConfigError, match="must be a mapping"):
        from_dict(RunCfg, [1, 2])  # type: ignore[arg-type]


def test_to_dict_is_plain_yaml_and_round_trips():
    cfg = from_dict(RunCfg, {"stages": [{"name": "a"}], "warmup": {}, "tags": {"x": 2}})
    data = to_dict(cfg)
    assert data["optim"]["betas"] == [0.9, 0.95] and data["out"] == "runs/test"
    text = yaml.safe_dump(data)  # raises on tuples, Paths or dataclasses
    assert from_dict(RunCfg, yaml.safe_load(text)) == cfg


@dataclass
class WithDerived:
    size: int = 2
    double: int = field(init=False)

    def __post_init__(self) -> None:
        self.double = 2 * self.size


def test_init_false_fields_are_not_settable_nor_dumped():
    assert to_dict(WithDerived(3)) == {"size": 3}
    with pytest.raises(ConfigError, match='unknown config key "double"'):
        from_dict(WithDerived, {"double": 4})


@given(
    n_layer=st.integers(0, 10**6),
    lr=st.floats(allow_nan=False, allow_infinity=False),
    name=st.text(max_size=20),
    steps=st.lists(st.integers(-5, 5), max_size=4),
)
def test_round_trip_property(n_layer, lr, name, steps):
    cfg = RunCfg(
        model=ModelCfg(n_layer=n_layer, name=name),
        optim=OptimCfg(lr=lr),
        stages=[StageCfg(str(s), s) for s in steps],
    )
    assert from_dict(RunCfg, yaml.safe_load(yaml.safe_dump(to_dict(cfg)))) == cfg


# ---------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    ("text", "keys", "value"),
    [
        ("a.b.c=4", ["a", "b", "c"], 4),
        ("lr=1e-3", ["lr"], 1e-3),  # PyYAML alone would read this as a string
        ("lr=3.0e+2", ["lr"], 300.0),
        ("flag=true", ["flag"], True),
        ("flag=False", ["flag"], False),
        ("word=yes", ["word"], "yes"),  # YAML 1.2: only true/false are booleans
        ("ids=[1, 2]", ["ids"], [1, 2]),
        ("m={a: 1}", ["m"], {"a": 1}),
        ("x=null", ["x"], None),
        ("name=hello world", ["name"], "hello world"),
        ("date=2024-01-02", ["date"], "2024-01-02"),
        ("expr=a=b", ["expr"], "a=b"),  # split at the first '='
        ("bad=[1,", ["bad"], "[1,"),  # not YAML: kept as the raw text
    ],
)
def test_parse_override_values(text, keys, value):
    assert parse_override(text) == (keys, value)


@pytest.mark.parametrize("text", ["no-equals-sign", "=3", "a..b=1", ".a=1"])
def test_parse_override_rejects_malformed(text):
    with pytest.raises(ConfigError, match="override"):
        parse_override(text)


def test_apply_overrides_sets_nested_keys_without_mutating_input():
    data = {"model": {"n_layer": 2}}
    out = apply_overrides(data, ["model.n_layer=4", "optim.lr=1e-4", "stages=[{name: a}]"])
    assert out == {"model": {"n_layer": 4}, "optim": {"lr": 1e-4}, "stages": [{"name": "a"}]}
    assert data == {"model": {"n_layer": 2}}


def test_apply_overrides_indexes_lists():
    out = apply_overrides({"stages": [{"name": "a"}, {"name": "b"}]}, ["stages.1.steps=7"], RunCfg)
    assert out["stages"][1] == {"name": "b", "steps": 7}
    with pytest.raises(ConfigError, match="list of 2 items"):
        apply_overrides({"stages": [{"name": "a"}, {"name": "b"}]}, ["stages.5=3"])


def test_apply_overrides_rejects_unknown_keys_with_suggestion():
    with pytest.raises(ConfigError, match=r'"model.n_layers".*did you mean "model.n_layer"'):
        apply_overrides({}, ["model.n_layers=4"], RunCfg)
    with pytest.raises(ConfigError, match=r'did you mean "optim"'):
        apply_overrides({}, ["optm.lr=1"], RunCfg)


def test_apply_overrides_type_checks_against_the_dataclass():
    with pytest.raises(ConfigError, match=r'override "model.n_layer=many".*"model.n_layer" must be int'):
        apply_overrides({}, ["model.n_layer=many"], RunCfg)
    assert apply_overrides({}, ["optim.lr=1"], RunCfg) == {"optim": {"lr": 1.0}}


def test_apply_overrides_keeps_text_for_string_fields():
    out = apply_overrides({}, ["model.name=007", "resume=true", "out=1e3"], RunCfg)
    assert out == {"model": {"name": "007"}, "resume": "true", "out": "1e3"}
    assert apply_overrides({"resume": "x"}, ["resume=null"], RunCfg) == {"resume": None}


def test_apply_overrides_below_a_dict_field_is_free_form():
    assert apply_overrides({}, ["tags.anything=3"], RunCfg) == {"tags": {"anything": 3}}


def test_apply_overrides_cannot_descend_into_a_scalar():
    with pytest.raises(ConfigError, match='"seed" is a int, not a mapping'):
        apply_overrides({"seed": 1}, ["seed.x=1"])


# ---------------------------------------------------------------- YAML files


def write(tmp_path: Path, text: str | bytes, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_load_yaml_reads_a_mapping_with_yaml12_scalars(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 1e-3\nflag: on\nn: 10\nx: .5\n")
    assert load_yaml(path) == {"optim": {"lr": 0.001}, "flag": "on", "n": 10, "x": 0.5}


def test_load_yaml_empty_file_is_empty_config(tmp_path):
    assert load_yaml(write(tmp_path, "# nothing yet\n")) == {}


def test_load_yaml_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"config file not found: .*nope\.yaml"):
        load_yaml(tmp_path / "nope.yaml")


def test_load_yaml_directory(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        load_yaml(tmp_path)


def test_load_yaml_invalid_names_file_and_line(tmp_path):
    path = write(tmp_path, "model:\n  n_layer: 2\n  d_model: [32\nseed: 1\n", name="bad.yaml")
    with pytest.raises(DataError) as info:
        load_yaml(path)
    message = str(info.value)
    assert str(path) in message and "invalid YAML" in message
    line = int(message.split(f"{path}:")[1].split(":")[0])
    assert line in (3, 4)  # the open bracket (line 3) is noticed where the flow sequence breaks


def test_load_yaml_bad_indentation_line(tmp_path):
    path = write(tmp_path, "a: 1\nb: 2\n  c: 3\n")
    with pytest.raises(DataError, match=rf"{path}:3:\d+: invalid YAML"):
        load_yaml(path)


def test_load_yaml_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path, "seed: 1\nmodel:\n  n_layer: 2\n  n_layer: 3\n")
    with pytest.raises(DataError, match=rf"{path}:4:\d+: invalid YAML: duplicate key 'n_layer'"):
        load_yaml(path)


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_load_yaml_top_level_must_be_a_mapping(tmp_path, text):
    with pytest.raises(DataError, match="top level must be a mapping"):
        load_yaml(write(tmp_path, text))


def test_load_yaml_non_utf8(tmp_path):
    path = write(tmp_path, b"a: 1\nname: caf\xe9\n")
    with pytest.raises(DataError, match=rf"{path}:2: not valid UTF-8"):
        load_yaml(path)


# ---------------------------------------------------------------- load_config


def test_load_config_combines_file_and_overrides(tmp_path):
    path = write(tmp_path, "model:\n  n_layer: 3\noptim:\n  lr: 2e-4\n")
    cfg = load_config(RunCfg, path, ["model.d_model=64", "optim.lr=1e-3"])
    assert cfg.model == ModelCfg(n_layer=3, d_model=64)
    assert cfg.optim.lr == 1e-3
    assert load_config(RunCfg) == RunCfg()


def test_load_config_error_names_the_file(tmp_path):
    path = write(tmp_path, "model:\n  n_layers: 3\n")
    with pytest.raises(ConfigError, match=rf'{path}: unknown config key "model.n_layers"'):
        load_config(RunCfg, path)


def test_dataclass_fields_are_resolved_from_string_annotations():
    # the whole module uses postponed annotations; make sure that's what we are testing
    assert isinstance(dataclasses.fields(RunCfg)[0].type, str)
