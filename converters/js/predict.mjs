// Runs a TF.js graph-model bundle on raw float32 pixels and prints the probabilities as JSON.
// Usage: node predict.mjs BUNDLE_DIR PIXELS.f32 N,H,W,C [backend]
// Loads the bundle from disk through tf.io.fromMemory, since plain @tensorflow/tfjs (without the
// native tfjs-node binary, which cannot be installed offline) has no file:// loader.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const require = createRequire(join(process.env.NODE_PATH || process.cwd(), "noop.js"));
const tf = require("@tensorflow/tfjs");

const [bundleDir, pixelsPath, shapeText, backend = "cpu"] = process.argv.slice(2);
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
process.stdout.write(JSON.stringify({ backend: tf.getBackend(), probs: await probs.array() }) + "\n");
