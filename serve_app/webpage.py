"""The small page at `GET /`: upload or record audio, see the transcript and segments,
and play it back with each word lit as it is spoken (click a word to hear it).

Plain HTML and a few lines of JavaScript, served from memory: nothing to build, nothing
fetched from elsewhere. Browser recordings arrive as WebM/Opus, which the ingress decodes.
"""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Speech to text</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; }
  fieldset { border: 1px solid #ccc; border-radius: 6px; margin-bottom: 1rem; }
  button { font-size: 1rem; padding: .4rem 1rem; margin-right: .5rem; }
  #status { color: #555; min-height: 1.5em; }
  #status.error { color: #b00020; }
  #transcript { white-space: pre-wrap; background: #f6f6f6; padding: 1rem; border-radius: 6px; min-height: 3rem; }
  table { border-collapse: collapse; width: 100%; margin-top: 1rem; }
  td, th { border-bottom: 1px solid #ddd; padding: .3rem .5rem; text-align: left; vertical-align: top; }
  td.time { white-space: nowrap; font-variant-numeric: tabular-nums; color: #555; }
  #transcript .word { cursor: pointer; border-radius: 3px; }
  #transcript .word.now { background: #ffe08a; }
  audio { width: 100%; margin-bottom: .5rem; }
</style>
</head>
<body>
<h1>Speech to text</h1>
<fieldset>
  <legend>Audio</legend>
  <p><input type="file" id="file" accept="audio/*,video/*">
     <button id="send" type="button">Transcribe file</button></p>
  <p><button id="record" type="button">Record</button>
     <button id="stop" type="button" disabled>Stop and transcribe</button></p>
  <p><label>Language (optional) <input id="language" size="4" placeholder="en"></label>
     <label>API key (if required) <input id="key" type="password" size="20"></label></p>
</fieldset>
<p id="status" role="status"></p>
<h2>Transcript</h2>
<audio id="player" controls hidden></audio>
<div id="transcript"></div>
<table id="segments"><thead><tr><th>Start</th><th>End</th><th>Text</th></tr></thead><tbody></tbody></table>
<script>
const $ = (id) => document.getElementById(id);
const status = (text, isError = false) => { $("status").textContent = text; $("status").className = isError ? "error" : ""; };
const clock = (s) => new Date(s * 1000).toISOString().substring(11, 22);

function request(blob, filename, words) {
  const form = new FormData();
  form.append("file", blob, filename);
  form.append("response_format", "verbose_json");
  if (words) { form.append("timestamp_granularities[]", "word"); form.append("timestamp_granularities[]", "segment"); }
  if ($("language").value.trim()) form.append("language", $("language").value.trim());
  const headers = $("key").value ? { Authorization: "Bearer " + $("key").value } : {};
  return fetch("v1/audio/transcriptions", { method: "POST", body: form, headers });
}

// The words as spans that light up while the audio plays; a click plays from that word.
function showWords(words) {
  $("transcript").textContent = "";
  words.forEach((w, i) => {
    const span = document.createElement("span");
    span.className = "word"; span.textContent = w.word;
    span.dataset.start = w.start; span.dataset.end = w.end;
    span.onclick = () => { $("player").currentTime = w.start; $("player").play(); };
    if (i) $("transcript").append(" ");
    $("transcript").append(span);
  });
}
function highlight(t) {
  for (const span of document.querySelectorAll("#transcript .word")) {
    span.classList.toggle("now", +span.dataset.start <= t && t < +span.dataset.end);
  }
}
$("player").ontimeupdate = () => highlight($("player").currentTime);

async function transcribe(blob, filename) {
  status("Transcribing " + filename + " ...");
  $("transcript").textContent = "";
  $("segments").tBodies[0].innerHTML = "";
  $("player").hidden = true;
  const started = performance.now();
  try {
    let response = await request(blob, filename, true);
    let body = await response.json();
    // Models that cannot time words (GLM-ASR) say so: ask again without them.
    if (response.status === 400 && body.error.param === "timestamp_granularities") {
      response = await request(blob, filename, false);
      body = await response.json();
    }
    if (!response.ok) { status("Error " + response.status + ": " + body.error.message, true); return; }
    if (body.words && body.words.length) showWords(body.words);
    else $("transcript").textContent = body.text || "(no speech)";
    $("player").src = URL.createObjectURL(blob); $("player").hidden = false;
    for (const s of body.segments) {
      const row = $("segments").tBodies[0].insertRow();
      row.insertCell().textContent = clock(s.start); row.cells[0].className = "time";
      row.insertCell().textContent = clock(s.end); row.cells[1].className = "time";
      row.insertCell().textContent = s.text;
    }
    status("Done: " + body.duration.toFixed(1) + " s of audio in " + ((performance.now() - started) / 1000).toFixed(1) + " s.");
  } catch (err) { status("Request failed: " + err, true); }
}

$("send").onclick = () => {
  const file = $("file").files[0];
  if (!file) { status("Choose a file first.", true); return; }
  transcribe(file, file.name);
};

let recorder = null, pieces = [];
$("record").onclick = async () => {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    recorder = new MediaRecorder(stream);
    pieces = [];
    recorder.ondataavailable = (e) => pieces.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      transcribe(new Blob(pieces, { type: recorder.mimeType || "audio/webm" }), "recording.webm");
    };
    recorder.start();
    $("record").disabled = true; $("stop").disabled = false;
    status("Recording ...");
  } catch (err) { status("Microphone unavailable: " + err, true); }
};
$("stop").onclick = () => { recorder.stop(); $("record").disabled = false; $("stop").disabled = true; };
</script>
</body>
</html>
"""
