// openai_client.mjs: the official OpenAI Node library against llmrt's
// OpenAI-compatible routes. test_clients copies it next to the installed
// node_modules, runs it with LLMRT_BASE_URL, LLMRT_API_KEY and LLMRT_MODEL
// (a workspace slug), and checks the JSON it prints. Any exception exits 1
// with the error on stderr.
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: `${process.env.LLMRT_BASE_URL}/api/v1/openai`,
  apiKey: process.env.LLMRT_API_KEY,
  maxRetries: 0,
  timeout: 30000,
});
const model = process.env.LLMRT_MODEL;
const out = {};

// models.list: the workspaces.
out.models = [];
for await (const m of client.models.list()) out.models.push(m.id);

// A completion, without streaming.
const sync = await client.chat.completions.create({
  model,
  temperature: 0.5,
  messages: [
    { role: "system", content: "Be brief." },
    { role: "user", content: "Hello from the OpenAI client" },
  ],
});
out.sync = {
  object: sync.object,
  model: sync.model,
  content: sync.choices[0].message.content,
  role: sync.choices[0].message.role,
  finish_reason: sync.choices[0].finish_reason,
  usage: sync.usage,
};

// The same with stream: true, the deltas collected.
const stream = await client.chat.completions.create({
  model,
  stream: true,
  messages: [{ role: "user", content: "Stream to the OpenAI client" }],
});
const collected = { chunks: 0, content: "", finish_reason: null, usage: null, ids: [] };
for await (const chunk of stream) {
  collected.chunks++;
  if (!collected.ids.includes(chunk.id)) collected.ids.push(chunk.id);
  const choice = chunk.choices[0];
  collected.content += choice?.delta?.content ?? "";
  if (choice?.finish_reason) collected.finish_reason = choice.finish_reason;
  if (chunk.usage) collected.usage = chunk.usage;
}
out.stream = collected;

// The library's stream helper, which rebuilds a whole completion from the
// chunks (and checks them more strictly).
const runner = client.chat.completions.stream({
  model,
  messages: [{ role: "user", content: "Through the stream helper" }],
});
const final = await runner.finalChatCompletion();
out.helper = {
  content: final.choices[0].message.content,
  finish_reason: final.choices[0].finish_reason,
};

// vectorStores.list, which pages with ?after=... until has_more is false.
out.vector_stores = [];
for await (const store of client.vectorStores.list()) out.vector_stores.push(store.id);

// embeddings.create: without an encoding_format the library asks for
// base64 and decodes it; with "float" it takes the numbers as they come.
const emb = await client.embeddings.create({
  model: "builtin",
  input: ["the lighthouse keeper trims the wick", "the lighthouse keeper trims the wick"],
});
const floats = await client.embeddings.create({
  model: "builtin",
  input: "the lighthouse keeper trims the wick",
  encoding_format: "float",
});
const a = emb.data[0].embedding, b = floats.data[0].embedding;
out.embeddings = {
  object: emb.object,
  count: emb.data.length,
  indexes: emb.data.map((d) => d.index),
  dim: a.length,
  float_dim: b.length,
  norm: Math.sqrt(a.reduce((sum, x) => sum + x * x, 0)),
  // base64 carries float32 exactly as the JSON numbers round-trip them
  max_difference: Math.max(...a.map((x, i) => Math.abs(x - b[i]))),
  usage: emb.usage,
};

// An unknown model: upstream's 401, which the library raises.
try {
  await client.chat.completions.create({
    model: "no-such-workspace",
    messages: [{ role: "user", content: "hi" }],
  });
  out.unknown = { status: 200 };
} catch (e) {
  out.unknown = { status: e.status ?? null, name: e.constructor.name };
}

console.log(JSON.stringify(out));
