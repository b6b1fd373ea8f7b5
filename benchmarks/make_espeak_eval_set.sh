#!/usr/bin/env bash
# Write an evaluation set of 40 synthetic sentences for `benchmarks.run --eval-dir DIR`.
#
#   benchmarks/make_espeak_eval_set.sh DIR     (needs espeak-ng: apt-get install -y espeak-ng)
#
# Unlike tests/data/speech (one voice at 150 words per minute), these cycle through six
# espeak-ng voices (American, British, Scottish, female and male variants) at 140-175 words
# per minute, which makes them harder for Whisper base: about 13 % WER against 3 % on the
# fixtures. They are synthetic speech, not recordings; score recorded speech too before
# trusting an accuracy figure. Files are espeak-ng's own WAV (22.05 kHz); the benchmark
# resamples on load. manifest.json maps each file to its text.
set -euo pipefail

OUT="${1:?usage: $0 DIR}"
mkdir -p "$OUT"
VOICES=(en-us en-gb en-gb-x-rp en-us+f3 en-gb-scotland en-us+m3)
SPEEDS_WPM=(140 160 175)
SENTENCES=(
  "The committee will announce its decision after the holidays."
  "Please send the invoice to the accounting department by Monday."
  "A gentle breeze carried the smell of rain across the valley."
  "He forgot his umbrella on the bus this morning."
  "The museum opens at ten and closes at half past five."
  "Our new neighbours moved in last week with their two dogs."
  "Scientists discovered a new species of frog in the rainforest."
  "Turn left at the second traffic light and park behind the bakery."
  "The concert was cancelled because the singer had a sore throat."
  "I would like a cup of tea with milk and no sugar."
  "The river flooded the fields after three days of heavy rain."
  "Remember to back up your files before installing the update."
  "The library has thousands of books about history and science."
  "She practised the piano every evening for an hour."
  "The mechanic said the brakes need to be replaced soon."
  "Children under twelve must be accompanied by an adult."
  "The bridge was built more than a hundred years ago."
  "We watched the sunset from the top of the hill."
  "The restaurant serves fresh fish caught by local fishermen."
  "Please keep your seat belt fastened while the sign is on."
  "My brother is studying engineering at the university."
  "The price of coffee has gone up again this year."
  "They planted tomatoes, beans and carrots in the garden."
  "The doctor told him to drink more water and rest."
  "Every student must hand in the essay before the deadline."
  "The old castle stands on a rock above the sea."
  "Our team won the match in the last minute of the game."
  "The printer on the third floor is out of paper again."
  "A large crowd gathered in the square to hear the speech."
  "He fixed the broken chair with glue and a few nails."
  "The airport bus leaves every twenty minutes from the station."
  "Winter evenings are long and dark in the north."
  "She wrote a letter to her grandmother in Scotland."
  "The software crashed when I opened the large spreadsheet."
  "Fresh snow covered the mountains during the night."
  "The teacher asked the class to read the first chapter."
  "We need to buy a new battery for the smoke alarm."
  "The farmer sold eggs and honey at the Saturday market."
  "Traffic was slow on the motorway because of an accident."
  "The hotel room had a beautiful view of the lake."
)

{
  echo "{"
  for i in "${!SENTENCES[@]}"; do
    name=$(printf 's%02d.wav' "$i")
    espeak-ng -v "${VOICES[$((i % ${#VOICES[@]}))]}" -s "${SPEEDS_WPM[$((i % ${#SPEEDS_WPM[@]}))]}" \
      -w "$OUT/$name" "${SENTENCES[$i]}"
    separator=$([ "$i" -lt $((${#SENTENCES[@]} - 1)) ] && echo "," || true)
    printf '  "%s": "%s"%s\n' "$name" "${SENTENCES[$i]}" "$separator"
  done
  echo "}"
} > "$OUT/manifest.json"
echo "wrote ${#SENTENCES[@]} sentences and manifest.json to $OUT"
