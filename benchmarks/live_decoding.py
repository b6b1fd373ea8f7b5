"""How a live session's decode policy paces its deltas, in one process, without Ray.

    python -m benchmarks.live_decoding                      # espeak turns, then a monologue
    python -m benchmarks.live_decoding --seconds 90 --runs 3
    python -m benchmarks.live_decoding --no-monologue
    python -m benchmarks.live_decoding --policies continued,strict

A quick A/B tool for `serve_app.realtime` (two minutes a run, where benchmarks.realtime
needs a service and ten): the real `RealtimeSession`, fed 100-ms appends at real-time pace,
decodes through the demo model (Whisper base, INT8, trimmed windows, 2 torch threads, as
configs/local.yaml) on one worker thread, the live lane's order without its priorities or
the HTTP and Ray hops. Each run compares policies (--policies, by default `continued` and
`whole`), interleaved so that all see the same machine:
- `continued`: the service's default; a re-decode is given the words already sent and
  generates only what follows;
- `whole`: every re-decode decodes the whole turn (sealed past 25 s)
  (`realtime.continue_sent_text` off);
- `strict`: as `continued`, but a word two decodes hear differently holds back the words
  after it until two decodes agree on it (no bridging: `partials.MAX_DISPUTED` 0);
- `agreed`: as `continued`, but only text two decodes agree on is sent, however long the
  speaker waits (`realtime.delta_deadline_s` null).

Streams: the espeak turns of benchmarks.realtime (1-3 sentences, 0.2-s gaps inside, 1.5 s
of silence after; server_vad defaults) for --seconds, and a monologue: long_45s.wav (44 s,
1.4-s pauses) as one turn with silence_duration_ms 2000. Per stream: the gaps between
deltas while a turn is spoken (its start to the first delta, delta to delta, the last to
its end of speech), the decodes' lengths and times, and the turns whose deltas differ from
their `completed` transcript, and the word error rates of the deltas and of `completed`
against the text spoken. The monologue's own final decode is one 44-s chunk, which
the backend refuses (over 30 s), so its `completed` is empty here; the service splits it
as a file (not measured here). Results go to
benchmarks/results/live-decoding-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np

from benchmarks import realtime as streams
from benchmarks.common import REPO_ROOT, machine_info, write_json
from serve_app.audio import SAMPLE_RATE
from serve_app.config import RealtimeSettings
from serve_app.realtime import partials
from serve_app.realtime.session import RealtimeSession
from serve_app.speech import SpeechDetector
from tests.in_process_decoder import Decode, InProcessDecoder

POLICIES = ("continued", "whole", "strict", "agreed")
MONOLOGUE_PAUSE_MS = 2000


def monologue_plan() -> streams.StreamPlan:
    from tests.speech import LONG_FIXTURE, load_fixture

    fixture = load_fixture(LONG_FIXTURE)
    lead, tail = np.zeros(SAMPLE_RATE // 2, np.float32), np.zeros(3 * SAMPLE_RATE, np.float32)
    turn = streams.TurnPlan(0, [LONG_FIXTURE], fixture.text, lead.size,
                            lead.size + fixture.audio.size)
    return streams.StreamPlan(0, [turn], streams.to_pcm(np.concatenate([lead, fixture.audio, tail])))


async def run_stream(plan: streams.StreamPlan, decoder: InProcessDecoder,
                     pause_ms: int | None, settings: RealtimeSettings) -> dict:
    events: list[tuple[float, dict]] = []
    began = time.monotonic()

    async def send(event: dict) -> None:
        events.append((time.monotonic() - began, event))

    session = RealtimeSession(send, decoder, settings, "whisper-1",
                              accepts_model=lambda _: True, languages=("en",), beta=False)
    await session.start()
    if pause_ms is not None:
        await session.handle({"type": "session.update", "session": {
            "type": "transcription", "audio": {"input": {"turn_detection": {
                "type": "server_vad", "silence_duration_ms": pause_ms}}}}})
    began = time.monotonic()
    for k in range(plan.appends):  # real-time pace against the monotonic clock
        await asyncio.sleep(max(0.0, began + (k + 1) * 0.1 - time.monotonic()))
        await session.handle({"type": "input_audio_buffer.append", "audio": plan.chunk(k)})
    await session.finish_open_turn()
    await session.close()
    return turn_gaps(plan, events)


def turn_gaps(plan: streams.StreamPlan, events: list[tuple[float, dict]]) -> dict:
    """Gaps between deltas while each turn was spoken; items are taken in turn order."""
    deltas: dict[str, list[tuple[float, str]]] = {}
    completed: dict[str, str] = {}
    for at, event in events:
        if event["type"] == "conversation.item.input_audio_transcription.delta":
            deltas.setdefault(event["item_id"], []).append((at, event["delta"]))
        elif event["type"] == "conversation.item.input_audio_transcription.completed":
            completed[event["item_id"]] = event["transcript"]
    gaps, per_turn, differing, spoken, heard, final = [], [], [], [], [], []
    for turn, (item_id, transcript) in zip(plan.turns, completed.items()):
        start_s, end_s = turn.start / SAMPLE_RATE, turn.end / SAMPLE_RATE
        during = [at for at, _ in deltas.get(item_id, []) if at <= end_s]
        # Per turn too: the first gap waits for the first delta, the last for the end.
        per_turn.append([round(g, 3) for g in np.diff([start_s, *during, end_s]).tolist()])
        gaps += per_turn[-1]
        said = "".join(delta for _, delta in deltas.get(item_id, []))
        spoken.append(turn.text)
        heard.append(said)
        final.append(transcript)
        if streams.normalize(said) != streams.normalize(transcript):
            differing.append({"deltas": said, "completed": transcript})
    return {"gaps_s": gaps, "turn_gaps_s": per_turn, "differing": differing,
            "turns": len(completed),
            # Over all turns as one text, so a long turn weighs as much as its words.
            "deltas_wer": streams.wer(" ".join(spoken), " ".join(heard)),
            "completed_wer": streams.wer(" ".join(spoken), " ".join(final))}


def summary(result: dict, decodes: list[Decode]) -> dict:
    gaps = np.asarray(result["gaps_s"])
    regular = [d for d in decodes if not d.urgent]
    return {
        "gap_p50_s": float(np.median(gaps)), "gap_max_s": float(gaps.max()),
        "gaps_within_1s": float(np.mean(gaps <= 1.0)),
        "decodes": len(decodes),
        "regular_audio_s_mean": statistics.fmean(d.audio_s for d in regular),
        "regular_seconds_mean": statistics.fmean(d.seconds for d in regular),
        "turns": result["turns"], "deltas_differ": len(result["differing"]),
        "deltas_wer": result["deltas_wer"], "completed_wer": result["completed_wer"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="espeak turns per run")
    parser.add_argument("--runs", type=int, default=1, help="A/B pairs, interleaved")
    parser.add_argument("--no-monologue", action="store_true")
    parser.add_argument("--partial-every-s", type=float, default=None,
                        help="realtime.partial_every_s for every policy (default: the "
                        "service's)")
    parser.add_argument("--policies", default="continued,whole",
                        help=f"comma-separated, of {', '.join(POLICIES)}")
    args = parser.parse_args()
    policies = args.policies.split(",")
    if unknown := set(policies) - set(POLICIES):
        parser.error(f"unknown policies: {', '.join(sorted(unknown))}")

    import torch

    from serve_app.backends import load_backend

    torch.set_num_threads(2)
    backend = load_backend(str(REPO_ROOT / "models" / "whisper-base"), device="cpu",
                           dtype=torch.float32, quantization="int8", decode_threads=1,
                           encoder_window="trimmed")
    detector = SpeechDetector()
    plans = [("turns", streams.plan_stream(0, streams.sentences(), args.seconds), None)]
    if not args.no_monologue:
        plans.append(("monologue", monologue_plan(), MONOLOGUE_PAUSE_MS))
    bridging = partials.MAX_DISPUTED
    rows = []
    for run in range(args.runs):
        for name, plan, pause_ms in plans:
            for policy in policies:
                decoder = InProcessDecoder(backend, detector)
                tuned = ({} if args.partial_every_s is None
                         else {"partial_every_s": args.partial_every_s})
                if policy == "agreed":
                    tuned["delta_deadline_s"] = None
                settings = RealtimeSettings(continue_sent_text=policy != "whole", **tuned)
                partials.MAX_DISPUTED = 0 if policy == "strict" else bridging
                result = asyncio.run(run_stream(plan, decoder, pause_ms, settings))
                row = {"run": run, "stream": name, "policy": policy,
                       **summary(result, decoder.decodes), "raw": result}
                rows.append(row)
                print(f"run {run} {name:9} {policy:7}: gap p50 {row['gap_p50_s']:.2f} s, "
                      f"≤1s {row['gaps_within_1s']:.2f}, max {row['gap_max_s']:.2f} s; "
                      f"re-decodes of {row['regular_audio_s_mean']:.1f} s in "
                      f"{row['regular_seconds_mean']:.2f} s; deltas differ from completed "
                      f"in {row['deltas_differ']}/{row['turns']} turns; WER deltas "
                      f"{row['deltas_wer']:.3f}, completed {row['completed_wer']:.3f}",
                      flush=True)
    partials.MAX_DISPUTED = bridging
    path = write_json("live-decoding", {"machine": machine_info(), "args": vars(args),
                                        "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
