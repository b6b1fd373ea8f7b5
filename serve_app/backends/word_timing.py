"""Word times for Whisper from its alignment heads' cross-attention, as openai-whisper does.

After `generate`, one more decoder pass runs over each chunk's own tokens (teacher-forced,
no cache) and captures the cross-attention of the checkpoint's alignment heads only: the
heads whose attention follows the audio in time (`generation_config.alignment_heads`).
Those weights, normalised per head and median-filtered, give a cost matrix of tokens
against encoder frames (20 ms each); dynamic time warping through it assigns each token a
frame, and each word the frames of its first and last tokens.

Why not transformers' `return_token_timestamps`: it needs attention weights from every
head of every layer, which SDPA attention does not return and which cost memory for a whole
batch; here two projections per alignment head are recomputed from the decoder's own
inputs, for one extra pass (measured in docs/performance.md).
"""

from __future__ import annotations

import threading

import string
from dataclasses import dataclass

import numpy as np
import torch

FRAMES_PER_SECOND = 50  # Whisper's encoder: one frame per 20 ms (two 10-ms mel frames)
SAMPLES_PER_FRAME = 320  # at 16 kHz
MEDIAN_FILTER_WIDTH = 7  # openai-whisper's: smooths single-frame spikes in the attention
# A token starts where its attention has risen half-way from the low to the high of its
# stretch of the warping path.
ONSET_FRACTION = 0.5
# Punctuation joins the word it leans on, as openai-whisper merges it.
PREPENDED = "\"'“¿([{-"
APPENDED = "\"'.。,，!！?？:：”)]}、"
# Languages written without spaces: a word is every unicode-complete piece.
NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}


@dataclass(frozen=True)
class TimedWord:
    word: str  # as it appears in the text, with a leading space where the text has one
    start: float  # seconds from the start of the chunk
    end: float


def alignment_heads(model) -> list[tuple[int, int]]:
    """(decoder layer, head) pairs the checkpoint names; empty when it names none."""
    heads = getattr(model.generation_config, "alignment_heads", None) or []
    return [(int(layer), int(head)) for layer, head in heads]


class CrossAttentionCapture:
    """Recomputes the alignment heads' cross-attention scores while the decoder runs.

    A forward pre-hook on each involved layer's `encoder_attn` sees its query input and the
    encoder states; the query and key projections of the wanted heads give their scores.
    """

    def __init__(self, decoder, heads: list[tuple[int, int]]) -> None:
        self._decoder = decoder
        self._heads = heads
        # The model deployment runs a live lane beside the batch on another thread: the
        # hooks are on the shared modules, so they keep only this thread's calls.
        self._thread = threading.get_ident()
        self.scores: dict[tuple[int, int], torch.Tensor] = {}  # (layer, head) -> (B, T, F)
        self._handles: list = []

    def __enter__(self) -> "CrossAttentionCapture":
        for layer_index in sorted({layer for layer, _ in self._heads}):
            attention = self._decoder.layers[layer_index].encoder_attn
            self._handles.append(attention.register_forward_pre_hook(
                self._hook(layer_index), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, layer_index: int):
        heads = [head for layer, head in self._heads if layer == layer_index]

        def capture(module, args, kwargs=None):
            # kwargs is None when another thread's call races the hook's removal (torch
            # reads the hook table twice); that call is not ours either.
            if kwargs is None or threading.get_ident() != self._thread:
                return
            hidden = args[0] if args else kwargs["hidden_states"]
            encoder_states = kwargs["key_value_states"]
            batch, tokens, _ = hidden.shape
            head_dim = module.head_dim
            query = (module.q_proj(hidden) * module.scaling).view(batch, tokens, -1, head_dim)
            key = module.k_proj(encoder_states).view(batch, encoder_states.shape[1], -1, head_dim)
            for head in heads:
                self.scores[(layer_index, head)] = torch.einsum(
                    "btd,bfd->btf", query[:, :, head].float(), key[:, :, head].float())

        return capture


def token_frames(scores: torch.Tensor, n_frames: int, n_prefix: int) -> np.ndarray:
    """The encoder frame of each text token of one chunk, by dynamic time warping.

    `scores`: (heads, tokens, frames) raw attention scores over prefix + text + end token.
    Returns n_text + 1 frames: where each text token begins (read at the position that
    predicts it, the one before), and last where the last text token ends.
    """
    weights = scores[:, :, :n_frames].softmax(dim=-1)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = (weights - mean) / (std + 1e-8)
    weights = _median_filter(weights, MEDIAN_FILTER_WIDTH)
    # From the last prefix token (<|notimestamps|>) to the last text token: the end token
    # is where the last word ends.
    matrix = weights.mean(dim=0)[n_prefix - 1: -1].double().cpu().numpy()
    text_indices, time_indices = dtw(-matrix)
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    frames = time_indices[jumps]
    return _attention_onsets(matrix, frames)


def _attention_onsets(matrix: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Each token's start moved from where the warping path enters its row to where the
    row's attention rises within that stretch: the path enters through the pause before
    the token, the attention rises with its sound."""
    refined = frames.copy()
    for row in range(len(frames) - 1):
        begin, end = frames[row], max(frames[row + 1], frames[row] + 1)
        stretch = matrix[row, begin:end]
        if stretch.size < 3:
            continue
        low, high = stretch.min(), stretch.max()
        refined[row] = begin + int(np.argmax(stretch >= low + ONSET_FRACTION * (high - low)))
    return refined


def _median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    """Median over `width` frames along the last axis, edges reflected."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = torch.nn.functional.pad(x[None], (pad, pad, 0, 0), mode="reflect")[0]
    return padded.unfold(-1, width, 1).median(dim=-1).values


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path through `cost` (rows × columns), as (rows, columns)."""
    return _dtw_path(_dtw_trace(np.ascontiguousarray(cost, dtype=np.float64)))


def _dtw_trace_python(x: np.ndarray) -> np.ndarray:
    n, m = x.shape
    total = np.full((n + 1, m + 1), np.inf)
    trace = -np.ones((n + 1, m + 1), dtype=np.int8)
    total[0, 0] = 0.0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            diagonal, up, left = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
            if diagonal < up and diagonal < left:
                best, step = diagonal, 0
            elif up < left:
                best, step = up, 1
            else:
                best, step = left, 2
            total[i, j] = x[i - 1, j - 1] + best
            trace[i, j] = step
    return trace


try:  # numba comes with librosa; compiled once per process, on the first call
    import numba

    _dtw_trace = numba.njit(cache=False)(_dtw_trace_python)
except ImportError:  # pragma: no cover - librosa depends on numba
    _dtw_trace = _dtw_trace_python


def _dtw_path(trace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    trace[0, :] = 2
    trace[:, 0] = 1
    rows, columns = [], []
    while i > 0 or j > 0:
        rows.append(i - 1)
        columns.append(j - 1)
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    return np.array(rows[::-1]), np.array(columns[::-1])


def split_words(token_texts: list[str], language: str | None) -> list[list[int]]:
    """Indices of the tokens of each word: a word starts at a token that starts with a
    space (or, without spaces, at each piece that decodes whole); punctuation joins the
    word it leans on."""
    groups: list[list[int]] = []
    for index, text in enumerate(token_texts):
        if not groups:
            groups.append([index])
        elif language in NO_SPACE_LANGUAGES:
            if "\ufffd" in "".join(token_texts[i] for i in groups[-1]):
                groups[-1].append(index)  # an incomplete character: same piece
            else:
                groups.append([index])
        elif text.startswith(" ") or (text.strip() and _is_punctuation(text.strip())
                                      and text.strip()[0] in PREPENDED):
            groups.append([index])
        else:
            groups[-1].append(index)
    return _merge_punctuation(groups, token_texts)


def _is_punctuation(text: str) -> bool:
    return all(c in string.punctuation or c in PREPENDED or c in APPENDED for c in text)


def _merge_punctuation(groups: list[list[int]], token_texts: list[str]) -> list[list[int]]:
    def words(group: list[int]) -> str:
        return "".join(token_texts[i] for i in group).strip()

    merged: list[list[int]] = []
    pending_prefix: list[int] = []
    for group in groups:
        text = words(group)
        if text and _is_punctuation(text) and all(c in PREPENDED for c in text):
            pending_prefix += group  # an opening quote or bracket: onto the next word
            continue
        group = pending_prefix + group
        pending_prefix = []
        if merged and text and _is_punctuation(text) and all(c in APPENDED for c in text):
            merged[-1] += group  # a full stop or comma: onto the previous word
        else:
            merged.append(group)
    if pending_prefix:  # an opening mark at the very end stays with the last word
        if merged:
            merged[-1].extend(pending_prefix)
        else:
            merged.append(pending_prefix)
    return [g for g in merged if words(g)]


def words_from_frames(token_ids: list[int], frames: np.ndarray, language: str | None,
                      duration_s: float, decode) -> list[TimedWord]:
    """Words with times: a word spans from its first token's frame to the frame where the
    token after its last begins (the last word: where its last token ends), clipped to the
    audio. `decode` turns token ids into text (the tokenizer's)."""
    token_texts = [decode([t]) for t in token_ids]
    words: list[TimedWord] = []
    for group in split_words(token_texts, language):
        start = frames[group[0]] / FRAMES_PER_SECOND
        end = frames[group[-1] + 1] / FRAMES_PER_SECOND
        text = decode([token_ids[i] for i in group])  # whole: bytes split across tokens join
        words.append(TimedWord(text, min(start, duration_s), min(max(end, start), duration_s)))
    return words
