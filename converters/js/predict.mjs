// Runs a TF.js graph-model bundle on raw float32 pixels and prints the probabilities as JSON.
// Usage: node predict.mjs BUNDLE_DIR PIXELS.f32 N,H,W,C [backend] [repeats]
// With repeats > 0 it also times single-image predictions of the first image (median after 3
// warm-up runs, reading the result back each time) and prints it as latency_ms.
// Loads the bundle from disk through tf.io.fromMemory, since plain @tensorflow/tfjs (without the
// native tfjs-node binary, which cannot be installed offline) has no file:// loader.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const require = createRequire(join(process.env.NODE_PATH || process.cwd(), "noop.js"));
const tf = require("@tensorflow/tfjs");

const [bundleDir, pixelsPath, shapeText, backend = "cpu", repeatsText = "0"] = process.argv.slice(2);
if (backend === "wasm") require("@tensorflow/tfjs-backend-wasm");
const shape = shapeText.split(",").map(Number);
const modelJson = JSON.parse(readFileSync(join(bundleDir, "model.json"), "utf8"));
const specs = [];
const buffers = [];
for (const group of modelJson.weightsManifest) {
  specs.push(...group.weights);
  for (const path of group.paths) buffers.push(readFileSync(join(bundleDir, path)));
}
const joined = Buffer.concat(buffers);
const weightData = joined.buffer.slice(joined.byteOffset, joined.byteOffset + joined.byteLength);

await tf.setBackend(backend);
const model = await tf.loadGraphModel(tf.io.fromMemory({
  modelTopology: modelJson.modelTopology,
  weightSpecs: specs,
  weightData,
  format: modelJson.format,
  generatedBy: modelJson.generatedBy,
  convertedBy: modelJson.convertedBy,
  signature: modelJson.signature,
  userDefinedMetadata: modelJson.userDefinedMetadata,
}));
const raw = readFileSync(pixelsPath);
const pixels = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
const input = tf.tensor(pixels, shape, "float32");
const output = model.predict(input);
const probs = Array.isArray(output) ? output[0] : output;
const result = { backend: tf.getBackend(), probs: await probs.array() };

const repeats = Number(repeatsText);
if (repeats > 0) {
  const one = input.slice([0, 0, 0, 0], [1, ...shape.slice(1)]);
  const times = [];
  for (let i = 0; i < repeats + 3; i++) {
    const start = performance.now();
    const out = model.predict(one);
    (Array.isArray(out) ? out[0] : out).dataSync();
    tf.dispose(out);
    if (i >= 3) times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  const mid = times.length >> 1;
  result.latency_ms = times.length % 2 ? times[mid] : (times[mid - 1] + times[mid]) / 2;
}
process.stdout.write(JSON.stringify(result) + "\n");
