// Greedy decoding of an `edgetune merge` output in Node.js: onnxruntime-node runs the graph
// with its KV cache, the Hugging Face tokenizers binding reads tokenizer.json. No Python.
//
//   node generate.mjs MERGED_DIR "Convert to ISO date: Mar 5th 2021\nISO:" [--new 16] [--json]
//
// The merged folder keeps Optimum's names: input_ids, attention_mask, position_ids and
// past_key_values.N.key/value in; logits and present.N.key/value out.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import tokenizers from "tokenizers";

const { Tokenizer } = tokenizers;

/** Token ids of a plain prompt, BOS first when the tokenizer adds one (edgetune's rule: the config's
 * add_bos_token, else whatever the tokenizer's own post-processor does). */
export async function encode(modelDir, tokenizer, prompt) {
  const read = (file) => { try { return JSON.parse(readFileSync(join(modelDir, file), "utf8")); } catch { return {}; } };
  const config = { ...read("special_tokens_map.json"), ...read("tokenizer_config.json") };
  const bos = typeof config.bos_token === "string" ? config.bos_token : config.bos_token?.content;
  const bosId = bos ? tokenizer.tokenToId(bos) : null;
  let addBos = config.add_bos_token;
  if (addBos === undefined || addBos === null) {
    const probe = await tokenizer.encode("a", null, { addSpecialTokens: true });
    addBos = bosId !== null && probe.getIds()[0] === bosId;
  }
  const ids = Array.from((await tokenizer.encode(prompt, null, { addSpecialTokens: false })).getIds());
  if (addBos && bosId !== null && bosId !== undefined) ids.unshift(bosId);
  return ids;
}

/** The EOS ids of config.json and generation_config.json. */
function eosIds(modelDir) {
  const ids = new Set();
  for (const file of ["config.json", "generation_config.json"]) {
    try {
      const value = JSON.parse(readFileSync(join(modelDir, file), "utf8")).eos_token_id;
      for (const id of [].concat(value ?? [])) ids.add(id);
    } catch { /* a missing file adds nothing */ }
  }
  return ids;
}

/** Greedy tokens after `promptIds`: prefill once, then one token per run with the KV cache. */
export async function generate(session, promptIds, maxNew, stopIds = new Set()) {
  const pastInputs = session.inputNames.filter((n) => n.startsWith("past_key_values."));
  const meta = Object.fromEntries(session.inputMetadata.map((m) => [m.name, m]));
  const past = {};
  for (const name of pastInputs) {
    const [, heads, , headDim] = meta[name].shape;  // (batch, kv_heads, past_length, head_dim)
    past[name] = new ort.Tensor("float32", new Float32Array(0), [1, heads, 0, headDim]);
  }
  let ids = promptIds, total = promptIds.length;
  const out = [];
  for (let step = 0; step < maxNew; step++) {
    const feeds = {
      input_ids: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]),
      attention_mask: new ort.Tensor("int64", new BigInt64Array(total).fill(1n), [1, total]),
      ...past,
    };
    if (session.inputNames.includes("position_ids")) {
      const positions = BigInt64Array.from({ length: ids.length }, (_, i) => BigInt(total - ids.length + i));
      feeds.position_ids = new ort.Tensor("int64", positions, [1, ids.length]);
    }
    const results = await session.run(feeds);
    const logits = results.logits;  // (1, T, V)
    const vocab = logits.dims[2], last = logits.data.subarray((logits.dims[1] - 1) * vocab);
    let token = 0;
    for (let v = 1; v < vocab; v++) if (last[v] > last[token]) token = v;
    out.push(token);
    if (stopIds.has(token)) break;
    for (const name of pastInputs) past[name] = results[name.replace("past_key_values.", "present.")];
    ids = [token];
    total += 1;
  }
  return out;
}

async function main() {
  const args = process.argv.slice(2);
  const flag = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
  const [modelDir, prompt] = args;
  if (!modelDir || prompt === undefined) {
    console.error('usage: node generate.mjs MERGED_DIR PROMPT [--new N] [--json]');
    process.exit(2);
  }
  const maxNew = Number(flag("--new", "16"));
  const tokenizer = Tokenizer.fromFile(join(modelDir, "tokenizer.json"));
  const session = await ort.InferenceSession.create(join(modelDir, "model.onnx"), { intraOpNumThreads: 2 });
  const promptIds = await encode(modelDir, tokenizer, prompt);
  const started = performance.now();
  const tokens = await generate(session, promptIds, maxNew, eosIds(modelDir));
  const seconds = (performance.now() - started) / 1000;
  const text = await tokenizer.decode(tokens.filter((t) => !eosIds(modelDir).has(t)), true);
  if (args.includes("--json")) {
    console.log(JSON.stringify({ prompt_ids: promptIds, tokens, text, seconds, onnxruntime: ort.env.versions?.common }));
  } else {
    console.log(text);
    console.error(`${tokens.length} tokens in ${seconds.toFixed(2)} s (onnxruntime-node)`);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
