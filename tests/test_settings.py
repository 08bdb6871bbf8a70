"""Every setting is declared once: LLM keywords, CLI flags and POOLKIT_* variables come from the same fields."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging

import pytest

from poolkit import LLM
from poolkit.entrypoints.cli import make_parser
from poolkit.entrypoints.server_args import ServerArgs
from poolkit.settings import EngineArgs, add_arguments, env_name, from_arguments, resolve, setting_fields

pytestmark = pytest.mark.unit


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


@pytest.mark.parametrize("cls", [EngineArgs, ServerArgs])
def test_every_setting_has_a_flag_and_a_variable(cls) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls, exclude=("model",))
    flags = _flags(parser)
    for f in setting_fields(cls):
        if f.name == "model":
            continue
        assert "--" + f.name.replace("_", "-") in flags
        assert env_name(cls, f.name) == "POOLKIT_" + f.name.upper()


def test_llm_signature_is_generated_from_the_declaration() -> None:
    params = inspect.signature(LLM).parameters
    assert list(params) == [f.name for f in dataclasses.fields(EngineArgs)]
    assert params["dtype"].default == "auto" and params["max_num_seqs"].default == 256
    assert "POOLKIT_MAX_NUM_BATCHED_TOKENS" in LLM.__init__.__doc__


def test_explicit_beats_environment_beats_default(monkeypatch, caplog) -> None:
    monkeypatch.setenv("POOLKIT_DTYPE", "float32")
    monkeypatch.setenv("POOLKIT_MAX_NUM_SEQS", "64")
    monkeypatch.setenv("POOLKIT_COMPILE", "true")
    with caplog.at_level(logging.INFO, logger="poolkit.settings"):
        args = EngineArgs.resolve(dtype="bfloat16")
    assert (args.dtype, args.max_num_seqs, args.compile, args.packing) == ("bfloat16", 64, "on", "auto")
    # Values taken from the environment leave a trace; explicit ones do not.
    assert "POOLKIT_MAX_NUM_SEQS" in caplog.text and "POOLKIT_DTYPE" not in caplog.text


def test_bad_values_name_the_variable_or_argument(monkeypatch) -> None:
    monkeypatch.setenv("POOLKIT_MAX_NUM_SEQS", "many")
    with pytest.raises(ValueError, match="POOLKIT_MAX_NUM_SEQS='many'"):
        EngineArgs.resolve()
    monkeypatch.delenv("POOLKIT_MAX_NUM_SEQS")
    with pytest.raises(TypeError, match=r"unexpected argument.*max_batch_size"):
        EngineArgs.resolve(max_batch_size=4)
    with pytest.raises(ValueError, match="max_num_seqs must be a positive integer"):
        EngineArgs(max_num_seqs=0)
    with pytest.raises(TypeError, match="unexpected argument"):
        LLM(not_a_setting=1)


def test_cli_flags_env_and_command_line(monkeypatch) -> None:
    monkeypatch.setenv("POOLKIT_PORT", "9100")
    monkeypatch.setenv("POOLKIT_PACKING", "off")
    args = make_parser().parse_args(["serve", "m", "--dtype", "float32", "--served-model-name", "a", "b",
                                     "--no-cpu-prepack", "--max_num_seqs", "8"])
    engine = from_arguments(EngineArgs, args)
    server = from_arguments(ServerArgs, args)
    assert (engine.model, engine.dtype, engine.packing, engine.cpu_prepack, engine.max_num_seqs) == \
        ("m", "float32", "off", False, 8)
    assert engine.served_model_name == ["a", "b"] and engine.served_name == "a"
    assert server.port == 9100 and server.host == "127.0.0.1"
    help_text = make_parser()._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    assert "POOLKIT_MAX_NUM_BATCHED_TOKENS" in help_text and "default: 9100" in help_text


def test_resolve_is_generic() -> None:
    @dataclasses.dataclass
    class Toy:
        from poolkit.settings import setting as _setting

        width: int = _setting(3, help="a width")

    assert resolve(Toy, {}, environ={"POOLKIT_WIDTH": "7"}).width == 7
    assert resolve(Toy, {"width": 5}, environ={"POOLKIT_WIDTH": "7"}).width == 5


def test_llm_refuses_a_budget_below_the_model_length(tiny) -> None:
    path = str(tiny("encoder"))
    with pytest.raises(ValueError, match="max_num_batched_tokens=64 is smaller than max_model_len=128"):
        LLM(path, dtype="float32", max_num_batched_tokens=64)
    llm = LLM(path, dtype="float32", max_num_batched_tokens=64, max_model_len=64)
    assert llm.engine.scheduler_config.max_num_batched_tokens == 64
    assert "max_num_batched_tokens=64" in repr(llm) and "max_model_len=64" in repr(llm)


def test_pooler_config_alias_of_vllm() -> None:
    for flag in ("--override-pooler-config", "--pooler-config", "--pooler_config"):
        args = make_parser().parse_args(["serve", "m", flag, '{"enable_chunked_processing": true}'])
        assert from_arguments(EngineArgs, args).override_pooler_config == {"enable_chunked_processing": True}
