"""The small page at `GET /`: upload or record audio, see the transcript and segments,
and play it back with each word lit as it is spoken (click a word to hear it); or
transcribe the microphone live, each turn's text appearing as it is spoken.

Plain HTML and a few lines of JavaScript, served from memory: nothing to build, nothing
fetched from elsewhere. Browser recordings arrive as WebM/Opus, which the ingress decodes.
Live mode speaks OpenAI's Realtime protocol (a transcription session) to `v1/realtime`
beside the page: an AudioWorklet turns the microphone into 24-kHz PCM16 appends, the
server's voice activity detection cuts turns, and deltas show grey until the turn's final
transcript replaces them.
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
  #speaking { color: #b00020; font-weight: 600; }
  #transcript .turn.partial { color: #888; }
  #transcript .turn.partial:empty::before { content: "..."; }
  #transcript .turn.failed { color: #b00020; }
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
  <p><button id="live" type="button">Transcribe live</button>
     <button id="live-stop" type="button" disabled>Stop live</button>
     <span id="speaking" hidden>speaking</span></p>
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

// Live mode: OpenAI's Realtime protocol in transcription mode, over a WebSocket to
// v1/realtime beside the page. The server finds the turns; each turn is a line that
// fills with deltas (grey) until its final transcript replaces them.
const PCM_RATE = 24000;
// The audio thread's part: the microphone at the context's rate, linearly interpolated to
// 24 kHz, posted as 100-ms blocks (4800 bytes) of 16-bit little-endian PCM.
const PCM_WORKLET = `registerProcessor("pcm24", class extends AudioWorkletProcessor {
  constructor() { super(); this.step = sampleRate / ${PCM_RATE}; this.t = 0; this.last = 0; this.block(); }
  block() { this.pcm = new DataView(new ArrayBuffer(4800)); this.n = 0; }
  process([input]) {
    const x = input[0];
    if (!x) return true;
    // t: where the next output sample falls in x (-1 is the previous block's last sample).
    for (; this.t < x.length - 1; this.t += this.step) {
      const i = Math.floor(this.t), a = i < 0 ? this.last : x[i];
      const v = Math.max(-1, Math.min(1, a + (x[i + 1] - a) * (this.t - i)));
      this.pcm.setInt16(2 * this.n++, v * 32767, true);
      if (2 * this.n === this.pcm.byteLength) { this.port.postMessage(this.pcm.buffer, [this.pcm.buffer]); this.block(); }
    }
    this.t -= x.length; this.last = x[x.length - 1];
    return true;
  }
});`;
const base64 = (buffer) => btoa(String.fromCharCode(...new Uint8Array(buffer)));

// The open session: its socket, microphone, lines by item id, and the turn being spoken.
let live = null;

$("live").onclick = () => {
  const url = new URL("v1/realtime?intent=transcription", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const key = $("key").value;
  let socket;
  try { socket = new WebSocket(url, key ? ["realtime", "openai-insecure-api-key." + key] : ["realtime"]); }
  catch (err) { status("Cannot connect: " + err, true); return; }
  const session = live = { socket, lines: new Map(), speech: null, opened: false, stopping: false };
  $("transcript").textContent = "";
  $("segments").tBodies[0].innerHTML = "";
  $("player").hidden = true;
  $("live").disabled = true; $("live-stop").disabled = false;
  status("Connecting ...");
  socket.onopen = async () => {
    session.opened = true;
    socket.send(JSON.stringify({ type: "session.update", session: { type: "transcription", audio: { input: {
      format: { type: "audio/pcm", rate: PCM_RATE },
      transcription: { model: "whisper-1", language: $("language").value.trim() || null },
      turn_detection: { type: "server_vad", threshold: 0.5, prefix_padding_ms: 300, silence_duration_ms: 500 },
    } } } }));
    try { await startMicrophone(session); }
    catch (err) { status("Microphone unavailable: " + err, true); session.stopping = true; socket.close(); }
  };
  socket.onmessage = (e) => liveEvent(session, JSON.parse(e.data));
  socket.onclose = (e) => {
    releaseMicrophone(session);
    if (live === session) live = null;
    $("live").disabled = false; $("live-stop").disabled = true; $("speaking").hidden = true;
    if ($("status").className === "error") return;  // the error says more than the close
    if (session.stopping) status("Live transcription stopped.");
    else if (!session.opened) status("Could not open the live connection (is the API key right?).", true);
    else status("The live connection closed (" + e.code + (e.reason ? " " + e.reason : "") + ").", e.code !== 1000);
  };
};

async function startMicrophone(session) {
  const stream = await navigator.mediaDevices.getUserMedia(
    { audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false } });
  session.stream = stream;
  // A 24-kHz context lets the browser resample; one that cannot resample a microphone
  // gets its own rate, and the worklet interpolates.
  let context = session.context = new AudioContext({ sampleRate: PCM_RATE }), source;
  try { source = context.createMediaStreamSource(stream); }
  catch { context.close(); context = session.context = new AudioContext(); source = context.createMediaStreamSource(stream); }
  const code = URL.createObjectURL(new Blob([PCM_WORKLET], { type: "text/javascript" }));
  await context.audioWorklet.addModule(code);
  URL.revokeObjectURL(code);
  if (session.stopping || session.socket.readyState !== WebSocket.OPEN) { releaseMicrophone(session); return; }
  const pcm = new AudioWorkletNode(context, "pcm24");
  pcm.port.onmessage = (e) => {
    if (session.socket.readyState === WebSocket.OPEN && !session.stopping) {
      session.socket.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64(e.data) }));
    }
  };
  source.connect(pcm).connect(context.destination);  // outputs silence; keeps it pulled
  await context.resume();
}

function releaseMicrophone(session) {
  if (session.stream) session.stream.getTracks().forEach((t) => t.stop());
  if (session.context) session.context.close();
  session.stream = session.context = null;
}

function turnLine(session, itemId) {
  let line = session.lines.get(itemId);
  if (!line) {
    line = document.createElement("div");
    line.className = "turn partial"; line.dataset.item = itemId; line.dataset.deltas = 0;
    session.lines.set(itemId, line);
    $("transcript").append(line);
  }
  return line;
}

function liveEvent(session, event) {
  const line = event.item_id ? turnLine(session, event.item_id) : null;
  switch (event.type) {
    case "session.updated":
      if (!session.stopping) status("Listening ...");
      break;
    case "input_audio_buffer.speech_started":
      session.speech = event.item_id; $("speaking").hidden = false;
      break;
    case "input_audio_buffer.speech_stopped":
    case "input_audio_buffer.committed":
      session.speech = null; $("speaking").hidden = true;
      break;
    case "conversation.item.input_audio_transcription.delta":
      line.textContent += event.delta; line.dataset.deltas++;
      break;
    case "conversation.item.input_audio_transcription.completed":
      line.dataset.provisional = line.textContent;  // what the deltas said
      line.textContent = event.transcript; line.className = "turn final";
      break;
    case "conversation.item.input_audio_transcription.failed":
      line.textContent = "(not transcribed: " + event.error.message + ")"; line.className = "turn failed";
      break;
    case "error":
      status("Error: " + event.error.message, true);
      if (session.stopping) session.socket.close();
      break;
  }
  if (session.stopping) closeWhenDone(session);
}

// Stop: the microphone goes at once; a turn being spoken is committed, and the socket
// closes once every turn has its final transcript (or after a minute).
$("live-stop").onclick = () => {
  const session = live;
  session.stopping = true;
  releaseMicrophone(session);
  $("live-stop").disabled = true; $("speaking").hidden = true;
  if (session.speech && session.socket.readyState === WebSocket.OPEN) {
    session.socket.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
  }
  status("Finishing ...");
  setTimeout(() => session.socket.close(), 60000);
  closeWhenDone(session);
};
function closeWhenDone(session) {
  if (![...session.lines.values()].some((line) => line.classList.contains("partial"))) session.socket.close(1000);
}
</script>
</body>
</html>
"""
