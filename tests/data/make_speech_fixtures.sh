#!/usr/bin/env bash
# Regenerate the committed speech fixtures in tests/data/speech/.
#
# Tests only read the committed files; run this by hand when the sentences change.
# Needs espeak-ng and sox (Debian: apt-get install -y espeak-ng sox).
#
# Voice: espeak-ng "en-gb-x-rp" (British received pronunciation) at 150 words per minute.
# Of the stock voices it gave Whisper base the fewest errors; espeak's default 175 wpm is
# rushed enough to hurt recognition. Audio is resampled to 16 kHz mono 16-bit PCM WAV
# without dither (sox -D), so reruns with the same tool versions give the same bytes.
# long_45s.wav strings the six sentences and three more together with 1 s of silence
# between them, so long-audio tests cross the 30 s chunk boundary on real speech.
# manifest.json maps each file name to its exact text.
set -euo pipefail

VOICE="en-gb-x-rp"
SPEED_WPM=150
RATE_HZ=16000
PAUSE_S=1.0

OUT="$(cd "$(dirname "$0")" && pwd)/speech"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Plain words, numbers spelled out, no quotes or backslashes (the manifest is written raw).
SENTENCES=(
  "fox_dog|The quick brown fox jumps over the lazy dog."
  "train|The train to the city leaves from platform nine every morning."
  "groceries|She bought three apples, two oranges and a loaf of fresh bread."
  "oak_tree|My grandfather planted an old oak tree behind the house many years ago."
  "report|We should finish the report before the meeting on Friday afternoon."
  "weather|The weather will be sunny and warm for the next four days."
)
LONG_ONLY=(
  "Please remember to turn off the lights when you leave the office."
  "The children played in the garden until it was time for dinner."
  "Our flight was delayed by two hours because of the heavy snow."
)

synth() {  # synth TEXT OUTPUT.wav
  espeak-ng -v "$VOICE" -s "$SPEED_WPM" -w "$WORK/raw.wav" "$1"
  # Peak at -3 dBFS so resampling cannot clip, whatever level espeak-ng writes.
  sox -D "$WORK/raw.wav" -c 1 -b 16 -e signed-integer "$2" gain -n -3 rate "$RATE_HZ"
}

sox -D -n -r "$RATE_HZ" -c 1 -b 16 -e signed-integer "$WORK/pause.wav" trim 0 "$PAUSE_S"

manifest="{"
long_parts=()
long_text=""
for entry in "${SENTENCES[@]}"; do
  name="${entry%%|*}.wav"
  text="${entry#*|}"
  synth "$text" "$OUT/$name"
  manifest+=$'\n'"  \"$name\": \"$text\","
  long_parts+=("$OUT/$name" "$WORK/pause.wav")
  long_text+="$text "
done
i=0
for text in "${LONG_ONLY[@]}"; do
  synth "$text" "$WORK/long_$i.wav"
  long_parts+=("$WORK/long_$i.wav" "$WORK/pause.wav")
  long_text+="$text "
  i=$((i + 1))
done
unset 'long_parts[${#long_parts[@]}-1]'  # no pause after the last sentence
sox -D "${long_parts[@]}" "$OUT/long_45s.wav"
manifest+=$'\n'"  \"long_45s.wav\": \"${long_text% }\""$'\n'"}"
printf '%s\n' "$manifest" > "$OUT/manifest.json"

for f in "$OUT"/*.wav; do
  printf '%-16s %5.1f s\n' "$(basename "$f")" "$(soxi -D "$f")"
done
du -ch "$OUT"/* | tail -1
