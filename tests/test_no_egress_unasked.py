"""Nothing leaves the machine unasked: no default endpoint (the run stops before anything is computed,
naming the choices), a dry run that says what would be sent where and sends nothing, audio only to an
endpoint, and a stage name registered twice is an error, not a silent swap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from msf.cli import app
from msf.pipeline.config import ConfigError, load_config
from msf.pipeline.corpora.demo import build_demo_corpus
from msf.pipeline.errors import UsageError
from msf.pipeline.run.extraction import Extraction
from msf.pipeline.stage import REGISTRY, Egress, Item, Record, Stage, register, stage_class


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_corpus(tmp_path_factory.mktemp("egress") / "corpus", n=4, seed=6, progress=False)


def test_the_default_profile_names_no_endpoint_and_stops_before_anything(corpus: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-would-have-been-used")  # a key in the environment is no consent
    cache = tmp_path / "cache"
    r = CliRunner().invoke(app, ["extract", "--corpus", f"demo:{corpus}", "--cache", str(cache),
                                 "--set", "align.backend=provided"])  # every stage, the default profile
    assert r.exit_code == 2 and "Traceback" not in r.stderr, r.stderr
    message = " ".join(r.stderr.split())
    assert "no endpoint named" in message and "describe.backend=local" in message
    assert "describe.backend=knowledge" in message and "http://127.0.0.1:8000/v1" in message
    assert "describe.base_url=https://api.openai.com/v1" in message and "msf.toml" in message
    assert not cache.exists()  # nothing extracted, no cache created

    # The library path stops the same way, before the first stage computes.
    ex = Extraction(load_config(None, ["align.backend=provided"], corpus=f"demo:{corpus}", cache=str(cache),
                                workers=1, read_cwd=False))
    with pytest.raises(UsageError, match="no endpoint named"):
        ex.run(["audio", "describe"], progress=False)
    assert ex.store.index.entries("audio") == {}
    ex.close()


def test_a_named_remote_endpoint_is_counted_by_the_dry_run_and_sent_nothing(corpus: Path, tmp_path: Path) -> None:
    durations = [sf.info(p).duration for p in sorted((corpus / "wavs").glob("*.wav"))]
    r = CliRunner().invoke(app, ["extract", "--corpus", f"demo:{corpus}", "--cache", str(tmp_path / "cache"),
                                 "--stage", "describe", "--set", "align.backend=provided",
                                 "--set", "describe.base_url=https://llm.example.invalid/v1", "--set", "describe.audio=true",
                                 "--set", "describe.max_audio_s=2.5", "--dry-run", "--calibrate", "2", "--json"])
    assert r.exit_code == 0, r.stderr
    stages = json.loads(r.stdout.strip().splitlines()[-1])["stages"]
    assert stages["describe"]["sends"] == {"host": "llm.example.invalid", "requests": 4, "loopback": False,
                                           "audio_seconds": round(sum(min(d, 2.5) for d in durations), 1)}
    # not calibrated (that would send): no time for it, while the stages upstream were timed
    assert stages["describe"]["seconds"] is None and stages["emphasis"]["seconds"] is not None
    assert "sends" not in stages["emphasis"]
    text = CliRunner().invoke(app, ["extract", "--corpus", f"demo:{corpus}", "--cache", str(tmp_path / "cache"),
                                    "--stage", "describe", "--set", "align.backend=provided",
                                    "--set", "describe.base_url=http://127.0.0.1:9/v1", "--dry-run", "--calibrate", "0"])
    assert text.exit_code == 0, text.stderr
    assert "describe would send up to 4 requests (words only) to 127.0.0.1:9 (this machine)" in " ".join(text.stdout.split())


def test_egress_knows_loopback() -> None:
    assert Egress("http://127.0.0.1:8000/v1").loopback and Egress("http://localhost:8000/v1").loopback
    assert Egress("http://[::1]:8000/v1").loopback and Egress("http://127.3.4.5/v1").loopback
    assert not Egress("https://api.openai.com/v1").loopback and not Egress("http://10.0.0.2:8000/v1").loopback
    assert Egress("https://api.openai.com/v1").host == "api.openai.com"


@pytest.mark.parametrize("backend", ["local", "knowledge"])
def test_audio_with_a_backend_that_cannot_hear_is_one_clear_error(corpus: Path, tmp_path: Path, backend: str) -> None:
    sets = ["align.backend=provided", f"describe.backend={backend}", "describe.audio=true"]
    with pytest.raises(ConfigError, match="describe.audio=true needs describe.backend=openai"):
        Extraction(load_config(None, sets, corpus=f"demo:{corpus}", cache=str(tmp_path / "c"), read_cwd=False))
    r = CliRunner().invoke(app, ["extract", "--corpus", f"demo:{corpus}", "--cache", str(tmp_path / "c"),
                                 "--stage", "describe", *[a for s in sets for a in ("--set", s)]])
    assert r.exit_code == 2 and "Traceback" not in r.stderr and "reads text only" in r.stderr, r.stderr
    assert not (tmp_path / "c").exists()


def _stage_named(name: str, qualname: str, replaces: bool = False) -> type[Stage]:
    def compute(self: Stage, batch: list[Item]) -> list[Record | Exception]:
        return [{"x": 1} for _ in batch]

    cls = type(qualname, (Stage,), {"name": name, "compute": compute, "replaces": replaces, "__module__": "my_lab"})
    return cls  # type: ignore[return-value]


def test_a_stage_name_registered_twice_is_an_error_unless_one_replaces_the_other() -> None:
    stage_class("describe")  # the built-ins are registered
    builtin = REGISTRY["describe"]
    with pytest.raises(UsageError, match=r"two stages are registered as 'describe': "
                                         r"msf\.pipeline\.stages\.describe\.DescribeStage and my_lab\.HearingDescribe"):
        register(_stage_named("describe", "HearingDescribe"))
    assert REGISTRY["describe"] is builtin
    try:
        # a plugin that says it replaces the built-in wins, and stays when the built-in is registered again
        plugin = register(_stage_named("describe", "HearingDescribe", replaces=True))
        assert REGISTRY["describe"] is plugin
        register(builtin)
        assert REGISTRY["describe"] is plugin
        register(plugin)  # the same class imported again is no conflict
    finally:
        REGISTRY["describe"] = builtin
    # the other order: the replacement registered first (a plugin imported before msf's stages)
    try:
        REGISTRY.pop("probe", None)
        first = register(_stage_named("probe", "Replacement", replaces=True))
        register(_stage_named("probe", "Original"))
        assert REGISTRY["probe"] is first
        with pytest.raises(UsageError, match="my_lab.Replacement and my_lab.Second"):
            register(_stage_named("probe", "Second", replaces=True))
    finally:
        REGISTRY.pop("probe", None)
