// vgg-mobile web demo: classifies images in the browser with one of two runtimes:
// - TF.js: the graph model in model/ (backend WASM, WebGL or CPU);
// - MediaPipe Tasks (ImageClassifier, CPU delegate): the int8 .tflite that ships to Android,
//   model/model_int8.tflite, listed in runtimes.json when the export folder had one.
// Preprocessing follows model/manifest.json exactly as the Python pipeline does it: transparent
// pixels over white, bilinear resize with half-pixel centres and no antialiasing, rounding to
// whole pixel values, RGB in [0, 255]; the model normalises inside its graph. For MediaPipe the
// page does that resize itself (with TF.js) and hands it a canvas of the model's input size, so
// its own resize has nothing to do and both runtimes see the same pixels.
"use strict";

const MODEL_DIR = "model/";
const MAX_FILE_BYTES = 50 * 1024 * 1024;
const MAX_PIXELS = 89478485; // same limit as the Python checks (decompression bombs)
const BACKENDS = ["wasm", "webgl", "cpu"];

const $ = (id) => document.getElementById(id);
const MEDIAPIPE_DIR = "vendor/mediapipe/";
const state = {
  model: null, labels: [], manifest: null, size: null, busy: false,
  runtime: "tfjs", runtimes: null, mediapipe: null,
  warmup: {}, // first-inference (compile) time per runtime/backend, in ms
  switching: Promise.resolve(),
};

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// Removes the previous image, its predictions and timing (after an error, or a runtime switch).
function clearResult() {
  const preview = $("preview");
  if (preview.dataset.url) URL.revokeObjectURL(preview.dataset.url);
  delete preview.dataset.url;
  preview.removeAttribute("src");
  preview.hidden = true;
  preview.classList.remove("pixelated");
  $("image-name").textContent = "";
  const list = $("predictions");
  list.replaceChildren();
  delete list.dataset.top1;
  delete list.dataset.probs;
  $("timing").textContent = "";
}

async function fetchJson(path) {
  const response = await fetch(MODEL_DIR + path);
  if (!response.ok) throw new Error(`${MODEL_DIR}${path}: HTTP ${response.status}`);
  try {
    return await response.json();
  } catch (err) {
    throw new Error(`${MODEL_DIR}${path}: not valid JSON (${err.message})`);
  }
}

async function useBackend(wanted) {
  const order = [wanted, ...BACKENDS.filter((b) => b !== wanted)];
  for (const name of order) {
    try {
      if (await tf.setBackend(name)) {
        await tf.ready();
        const note = name === wanted ? "" : ` (${wanted} is not available here)`;
        $("backend-status").textContent = `using ${name}${note}`;
        $("backend").value = name;
        return name;
      }
    } catch (err) {
      console.warn(`backend ${name} failed:`, err);
    }
  }
  throw new Error("no TensorFlow.js backend works in this browser");
}

function runtimeKey() {
  return state.runtime === "mediapipe" ? "mediapipe" : `tfjs-${tf.getBackend()}`;
}

function runtimeName() {
  return state.runtime === "mediapipe" ? "MediaPipe (CPU, int8 .tflite)" : tf.getBackend();
}

// One untimed-for-results inference on a blank input: the first run compiles shaders / kernels,
// so it is reported apart as the warm-up time and never as the inference time.
async function warmUp() {
  const [h, w] = state.size;
  const blank = document.createElement("canvas");
  blank.width = w;
  blank.height = h;
  const start = performance.now();
  if (state.runtime === "mediapipe") {
    state.mediapipe.classify(blank);
  } else {
    const output = state.model.predict(tf.zeros([1, h, w, 3]));
    await output.data();
    output.dispose();
  }
  state.warmup[runtimeKey()] = performance.now() - start;
  $("backend-status").textContent =
    `using ${runtimeName()}; warm-up ${state.warmup[runtimeKey()].toFixed(0)} ms`;
}

async function loadRuntimes() {
  try {
    const response = await fetch("runtimes.json");
    state.runtimes = response.ok ? await response.json() : null;
  } catch (err) {
    state.runtimes = null;
  }
  const mediapipe = state.runtimes && state.runtimes.mediapipe;
  const option = $("runtime").querySelector('option[value="mediapipe"]');
  if (!mediapipe || !mediapipe.model) {
    const reason = (mediapipe && mediapipe.disabled) || "this demo folder has no runtimes.json";
    option.disabled = true;
    option.textContent += " (unavailable)";
    $("runtime-note").textContent = `MediaPipe is unavailable: ${reason}.`;
    $("runtime-note").hidden = false;
  }
}

async function loadMediapipe() {
  if (state.mediapipe) return state.mediapipe;
  const base = new URL(MEDIAPIPE_DIR, document.baseURI).href;
  const vision = await import(base + "vision_bundle.mjs");
  const fileset = await vision.FilesetResolver.forVisionTasks(base + "wasm");
  state.mediapipe = await vision.ImageClassifier.createFromOptions(fileset, {
    baseOptions: { modelAssetPath: state.runtimes.mediapipe.model, delegate: "CPU" },
    maxResults: state.labels.length,
    runningMode: "IMAGE",
  });
  return state.mediapipe;
}

async function useRuntime(wanted) {
  if (wanted === "mediapipe") await loadMediapipe();
  state.runtime = wanted;
  $("runtime").value = wanted;
  $("backend").disabled = wanted === "mediapipe";
}

// A runtime or backend switch: the old result and error go, and the new one is warmed up
// before anything is timed.
function switchTo(runtime, backend) {
  clearError();
  clearResult();
  document.body.dataset.state = "switching";
  state.switching = (async () => {
    await useRuntime(runtime);
    if (runtime === "tfjs") await useBackend(backend);
    await warmUp();
  })().then(
    () => { document.body.dataset.state = "ready"; },
    (err) => {
      document.body.dataset.state = "error";
      showError(`Could not start ${runtime === "mediapipe" ? "MediaPipe" : backend}: ${err.message}`);
    });
  return state.switching;
}

async function loadModel() {
  if (tf.wasm) tf.wasm.setWasmPaths(new URL("vendor/", document.baseURI).href);
  await useBackend($("backend").value);
  const [manifest, labels] = await Promise.all([fetchJson("manifest.json"), fetchJson("labels.json"),
                                                loadRuntimes()]);
  const model = await tf.loadGraphModel(MODEL_DIR + "model.json");
  const [height, width] = manifest.input.size;
  const probe = tf.tidy(() => model.predict(tf.zeros([1, height, width, 3])));
  const outputs = probe.shape[probe.shape.length - 1];
  probe.dispose();
  if (outputs !== labels.length) {
    throw new Error(`the model has ${outputs} outputs but labels.json lists ${labels.length} classes`);
  }
  Object.assign(state, { model, labels, manifest, size: [height, width] });
  const quantization = [undefined, "none"].includes(manifest.weight_quantization)
    ? "float32" : manifest.weight_quantization;
  $("model-info").textContent =
    `${manifest.architecture || "model"}: ${labels.length} classes (${labels.join(", ")}), ` +
    `${width}×${height} input; TF.js runs its ${quantization} weights.` +
    (state.runtimes && state.runtimes.mediapipe && state.runtimes.mediapipe.model
      ? ` MediaPipe runs ${state.runtimes.mediapipe.source || "the int8 .tflite"}.` : "");
  await warmUp();
}

// Pixels of an image, video frame or canvas, as the model's input tensor [1, h, w, 3].
function toInput(source, width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, width, height);
  ctx.drawImage(source, 0, 0, width, height);
  const [h, w] = state.size;
  return tf.tidy(() => {
    const pixels = tf.browser.fromPixels(canvas, 3).toFloat();
    const resized = tf.image.resizeBilinear(pixels, [h, w], false, true);
    return resized.round().clipByValue(0, 255).expandDims(0);
  });
}

async function predict(source, width, height) {
  await state.switching;
  const input = toInput(source, width, height);
  if (state.runtime === "mediapipe") {
    // The model-sized pixels, resized as for TF.js, drawn into a canvas for MediaPipe.
    const [h, w] = state.size;
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    const pixels = tf.tidy(() => input.squeeze(0).toInt());
    await tf.browser.toPixels(pixels, canvas);
    tf.dispose([input, pixels]);
    const start = performance.now();
    const result = state.mediapipe.classify(canvas);
    const ms = performance.now() - start;
    const probs = new Array(state.labels.length).fill(0);
    for (const category of result.classifications[0].categories) probs[category.index] = category.score;
    return { probs, ms };
  }
  const start = performance.now();
  const output = state.model.predict(input);
  const probs = await output.data();
  const ms = performance.now() - start;
  tf.dispose([input, output]);
  return { probs: Array.from(probs), ms };
}

function render({ probs, ms }) {
  const ranked = probs.map((p, i) => ({ label: state.labels[i], p })).sort((a, b) => b.p - a.p);
  const list = $("predictions");
  list.replaceChildren();
  for (const { label, p } of ranked.slice(0, 5)) {
    const item = document.createElement("li");
    item.className = "prediction";
    item.dataset.label = label;
    item.dataset.prob = String(p);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * p).toFixed(1)}%`;
    const name = document.createElement("span");
    name.textContent = label;
    const value = document.createElement("span");
    value.className = "prob";
    value.textContent = `${(100 * p).toFixed(1)}%`;
    item.append(bar, name, value);
    list.append(item);
  }
  list.dataset.top1 = ranked[0].label;
  list.dataset.probs = JSON.stringify(probs);
  const warm = state.warmup[runtimeKey()];
  $("timing").textContent = `inference ${ms.toFixed(1)} ms on ${runtimeName()}` +
    (warm === undefined ? "" : ` (warm-up, the first run: ${warm.toFixed(0)} ms)`);
  list.dataset.runtime = state.runtime;
  document.body.dataset.state = "done";
}

function decode(file) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => resolve({ img, url });
    img.onerror = () => {
      URL.revokeObjectURL(url);
      reject(new Error(`${file.name || "the pasted data"}: not an image this browser can read (corrupt, truncated or another kind of file)`));
    };
    img.src = url;
  });
}

async function classifyFile(file) {
  clearError();
  document.body.dataset.state = "working";
  try {
    if (!state.model) throw new Error("the model is not loaded");
    if (!file.type.startsWith("image/") && file.type !== "") {
      throw new Error(`${file.name}: not an image (${file.type})`);
    }
    if (file.size > MAX_FILE_BYTES) {
      throw new Error(`${file.name}: ${(file.size / 1e6).toFixed(1)} MB is too large (limit ${MAX_FILE_BYTES / 1e6} MB)`);
    }
    const { img, url } = await decode(file);
    const pixels = img.naturalWidth * img.naturalHeight;
    if (pixels > MAX_PIXELS) {
      URL.revokeObjectURL(url);
      throw new Error(`${file.name}: ${img.naturalWidth}×${img.naturalHeight} pixels is too large`);
    }
    const preview = $("preview");
    if (preview.dataset.url) URL.revokeObjectURL(preview.dataset.url);
    preview.src = url;
    preview.dataset.url = url;
    preview.hidden = false;
    // Small images are shown with crisp pixels, not a blurry upscale.
    preview.classList.toggle("pixelated", Math.max(img.naturalWidth, img.naturalHeight) < 224);
    $("image-name").textContent = file.name || "pasted image";
    render(await predict(img, img.naturalWidth, img.naturalHeight));
  } catch (err) {
    clearResult();
    document.body.dataset.state = "error";
    showError(err.message);
  }
}

async function startCamera() {
  clearError();
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
    const video = $("video");
    video.srcObject = stream;
    video.hidden = false;
    await video.play();
    $("capture").hidden = false;
  } catch (err) {
    showError(`The webcam is not available (${err.message}).`);
  }
}

async function captureFrame() {
  const video = $("video");
  if (!video.videoWidth) return;
  clearError();
  clearResult();
  $("image-name").textContent = "webcam frame";
  render(await predict(video, video.videoWidth, video.videoHeight));
}

// Median single-image latency on one backend, for the benchmark.
async function benchmark(backend, runs = 15, warmup = 3) {
  const used = await useBackend(backend);
  const [h, w] = state.size;
  const input = tf.randomUniform([1, h, w, 3], 0, 255);
  const times = [];
  for (let i = 0; i < warmup + runs; i++) {
    const start = performance.now();
    const output = state.model.predict(input);
    await output.data();
    output.dispose();
    if (i >= warmup) times.push(performance.now() - start);
  }
  input.dispose();
  times.sort((a, b) => a - b);
  return { backend: used, median_ms: times[Math.floor(times.length / 2)], runs };
}

function wireInputs() {
  const zone = $("dropzone");
  const fileInput = $("file");
  fileInput.addEventListener("change", () => {
    const file = fileInput.files[0];
    fileInput.value = ""; // so that choosing the same file again classifies it again
    if (file) classifyFile(file);
  });
  // The whole drop zone is the button: a click anywhere on it opens the file chooser.
  zone.addEventListener("click", (event) => {
    if (event.target !== fileInput) fileInput.click();
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      fileInput.click();
    }
  });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) classifyFile(file);
  });
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((i) => i.kind === "file");
    if (item) classifyFile(item.getAsFile());
  });
  $("camera").addEventListener("click", startCamera);
  $("capture").addEventListener("click", captureFrame);
  $("backend").addEventListener("change", (event) => switchTo("tfjs", event.target.value));
  $("runtime").addEventListener("change", (event) => switchTo(event.target.value, $("backend").value));
}

wireInputs();
window.vggDemo = {
  ready: loadModel().then(
    () => { document.body.dataset.state = "ready"; },
    (err) => {
      document.body.dataset.state = "error";
      showError(`Could not load the model bundle from ${MODEL_DIR}: ${err.message}. ` +
                "Build the demo folder with `vgg-mobile web-demo OUT --model EXPORT`.");
    }),
  benchmark,
  switchTo,
  // Model time of one image (a URL) on the current runtime, for benchmarks/browser_latency.py.
  timeImage: async (url) => {
    const img = new Image();
    img.src = url;
    await img.decode();
    return (await predict(img, img.naturalWidth, img.naturalHeight)).ms;
  },
  state,
};
