"""`msf.toml` and its overrides: corpus, cache, profile, execution and per-stage parameters.

    corpus = "demo:data/demo"
    cache = "cache/demo"
    name = "default"             # the feature set this extraction's settings are recorded under
    profile = "offline"          # or "default" (the paper's production models)
    workers = 2
    plugins = ["my_lab.stages"]  # modules registering extra stages
    [stages.emphasis]
    threshold = 0.6

Precedence: stage Params defaults < profile defaults < msf.toml < --set / --corpus / --cache.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from msf.pipeline.errors import MsfError
from msf.pipeline.stage import Stage, StageParams

CONFIG_FILE = "msf.toml"


class ConfigError(MsfError, ValueError):
    """Settings that cannot be used: a bad msf.toml, --set, or a missing corpus or cache."""


def validation_problems(e: ValidationError, model: type[BaseModel] | None = None) -> str:
    """pydantic's errors as one line: `key: message; key: message`; a key the model does not have is
    answered with the nearest ones it does ("did you mean threshold?"), or the list of them."""
    out = []
    for err in e.errors():
        key = ".".join(map(str, err["loc"]))
        line = f"{key}: {err['msg']}"
        if err["type"] == "extra_forbidden" and model is not None and len(err["loc"]) == 1:
            known = sorted(model.model_fields)
            near = difflib.get_close_matches(str(err["loc"][0]), known, n=2, cutoff=0.6)
            line = (f"{key}: no such setting; did you mean {' or '.join(near)}?" if near
                    else f"{key}: no such setting; the settings are {', '.join(known)}")
        out.append(line)
    return "; ".join(out)


class MsfConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    corpus: str | None = None
    cache: Path | None = None
    # The named feature set an extraction records its settings under; train --name picks it.
    name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    profile: Literal["default", "offline"] = "default"
    workers: int = Field(1, ge=1)
    scheduler: str | None = None
    shard_size: int = Field(256, ge=1)
    # Utterances the driver plans at a time: a larger corpus runs in chunks of whole speakers, so the
    # driver's memory does not grow with it (docs/scaling.md); results do not depend on it.
    chunk_size: int = Field(20_000, ge=1)
    # A generic manifest's label scale, e.g. [1, 7]: rows outside it are refused and reported.
    label_range: tuple[float, float] | None = None
    # Modules that define and register extra stages (imported here and on every worker).
    plugins: list[str] = Field(default_factory=list)
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def cache_dir(self) -> Path:
        if self.cache is not None:
            return self.cache
        if self.corpus is None:
            raise ConfigError("no cache directory: pass --cache DIR (or --corpus, or set it in msf.toml)")
        tail = Path(self.corpus.split(":", 1)[-1])
        name = tail.stem if tail.suffix else tail.name
        return Path("cache") / (name or "corpus")

    def params_for(self, stage: type[Stage]) -> StageParams:
        values = {**stage.profiles.get(self.profile, {}), **self.stages.get(stage.name, {})}
        try:
            return stage.Params(**values)
        except ValidationError as e:
            raise ConfigError(f"stage {stage.name!r} parameters: {validation_problems(e, stage.Params)}") from None


def parse_value(raw: str) -> Any:
    """`--set` values: JSON or TOML literals (numbers, booleans, lists), else the string itself."""
    for parse in (json.loads, lambda s: tomllib.loads(f"v = {s}")["v"]):
        try:
            return parse(raw)
        except (ValueError, tomllib.TOMLDecodeError):
            pass
    return raw


def parse_set(item: str, form: str) -> tuple[str, str, Any]:
    """One `--set` item as (section, key, value): `emphasis.threshold=0.6` is ("emphasis", "threshold",
    0.6), `workers=2` is ("", "workers", 2). `form` says what the command takes, in the error."""
    key, eq, raw = item.partition("=")
    section, dot, name = key.partition(".")
    if not eq or not key or (dot and not (section and name)):
        raise ConfigError(f"--set expects {form}, got {item!r}")
    return (section, name, parse_value(raw)) if dot else ("", key, parse_value(raw))


def load_config(
    path: Path | None = None,
    sets: list[str] = (),  # type: ignore[assignment]
    base: dict[str, Any] | None = None,
    read_cwd: bool = True,
    **overrides: Any,
) -> MsfConfig:
    """`base` (a recorded feature set's settings) < msf.toml (`path`, else ./msf.toml when `read_cwd`)
    < --set < the other overrides."""
    data: dict[str, Any] = json.loads(json.dumps(base)) if base else {}
    file = path if path is not None else Path(CONFIG_FILE) if read_cwd else None
    if path is not None and not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if file is not None and file.is_file():
        try:
            toml = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{file}: {e}") from None
        toml.pop("train", None)  # the trainer's settings (msf.trainer.train.train_settings reads them)
        for key, value in toml.items():  # `[acoustic]` for `[stages.acoustic]`: the common slip
            if key not in MsfConfig.model_fields and isinstance(value, dict):
                raise ConfigError(f"{file}: [{key}] is not a section msf reads; a stage's settings go "
                                  f"under [stages.{key}]")
        for stage, values in toml.pop("stages", {}).items():
            data.setdefault("stages", {}).setdefault(stage, {}).update(values)
        data.update(toml)
    for item in sets:
        stage, name, value = parse_set(item, "STAGE.KEY=VALUE or KEY=VALUE")
        if stage:
            data.setdefault("stages", {}).setdefault(stage, {})[name] = value
        else:
            data[name] = value
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = MsfConfig(**data)
    except ValidationError as e:
        raise ConfigError(f"configuration: {validation_problems(e, MsfConfig)}") from None
    from msf.pipeline.stage import load_plugins, stage_class

    load_plugins(config.plugins)
    for name in config.stages:
        try:
            stage_class(name)
        except KeyError as e:
            raise ConfigError(str(e)) from None
    return config
