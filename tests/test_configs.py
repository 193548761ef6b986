"""Every shipped YAML parses with the parser of the script it is for, and unknown keys are an error."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import yaml
from trl import TrlParser

from reviewtune.training.arguments import PretrainArguments

ROOT = Path(__file__).resolve().parents[1]


def _load(script: str):
    """Import a recipe/eval script (they are scripts, not package modules) by path."""
    path = ROOT / script
    spec = importlib.util.spec_from_file_location(f"_cfgtest_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _parse_pretrain(argv: list[str]):
    return TrlParser(PretrainArguments).parse_args_and_config(argv)


PARSERS = {
    "sft_qlora": lambda argv: _load("recipes/sft_qlora.py").parse_args(argv),
    "classify": lambda argv: _load("recipes/classify_roberta.py").parse_args(argv),
    "pretrain": _parse_pretrain,
    "compare": lambda argv: _load("eval/compare.py").parse_args(argv),
}
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*.yaml")) + sorted((ROOT / "eval" / "configs").glob("*.yaml"))


def _parser_for(path: Path):
    for prefix, parse in PARSERS.items():
        if path.name.startswith(prefix):
            return parse
    raise AssertionError(f"{path.name}: no parser for this config name (expected one of {', '.join(PARSERS)})")


def test_configs_are_shipped():
    names = {p.name for p in CONFIGS}
    assert {"sft_qlora_default.yaml", "classify_roberta_default.yaml", "compare_default.yaml"} <= names


def _parsed_value(parsed, key: str):
    for obj in parsed if isinstance(parsed, tuple | list) else (parsed,):
        if hasattr(obj, key):
            return getattr(obj, key)
    raise AssertionError(f"no parsed dataclass has field {key!r}")


def _same(parsed_value, yaml_value) -> bool:
    """A parsed field equals its YAML value (enums compare to their string value; report_to "none" is [])."""
    if yaml_value == "none" and parsed_value in ([], None, "none", ["none"]):
        return True
    if isinstance(yaml_value, float | int) and not isinstance(yaml_value, bool):
        return isinstance(parsed_value, float | int) and math.isclose(parsed_value, yaml_value)
    return parsed_value == yaml_value


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses(path: Path):
    """Every key of the file reaches its dataclass with the file's value (nothing dropped or coerced away)."""
    parsed = _parser_for(path)(["--config", str(path)])
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert values, path
    for key, value in values.items():
        got = _parsed_value(parsed, key)
        assert _same(got, value), f"{path.name}: {key} parsed as {got!r}, the file says {value!r}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_header_has_command(path: Path):
    header = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    assert any(("python" in line or "accelerate launch" in line) for line in header), f"{path}: no command in header"


@pytest.mark.parametrize("prefix", ["sft_qlora", "classify", "compare"])
def test_unknown_key_is_an_error(prefix: str, tmp_path: Path):
    source = next(p for p in CONFIGS if p.name.startswith(prefix))
    bad = tmp_path / "bad.yaml"
    bad.write_text(source.read_text(encoding="utf-8") + "\nnot_a_real_field: 1\n", encoding="utf-8")
    with pytest.raises((ValueError, SystemExit)) as excinfo:
        _parser_for(source)(["--config", str(bad)])
    if excinfo.type is ValueError:
        assert "not_a_real_field" in str(excinfo.value)
