// Drives the official Qianfan Node.js SDK (@baiducloud/qianfan 0.2.4) for
// tests/qianfan/test_qianfan_sdks.py: one request per stdin line (JSON), one JSON line back on
// stdout with what the SDK returned or raised.
//   {"auth": "oauth"|"iam", "ak", "sk", "kind": "chat"|"completions", "endpoint" | "model",
//    "text", "stream", "temperature"?, "max_output_tokens"?, "top_k"?, "stop"?}
// The SDK takes its endpoint in the constructor, so a client is kept per (auth, ak, sk, kind,
// endpoint, model), as an application keeps one: its token lives as long as this process.
// Base URLs come from the environment (QIANFAN_BASE_URL, QIANFAN_CONSOLE_API_BASE_URL), as
// the SDK reads them. Run from a folder whose node_modules holds the SDK (sdk_builds.py).
import { ChatCompletion, Completions } from "@baiducloud/qianfan";
import { createInterface } from "node:readline";
import { format } from "node:util";

// The SDK logs with console.log (retries, a failed service list): keep stdout for replies.
for (const level of ["log", "info", "warn", "error", "debug"]) {
  console[level] = (...args) => process.stderr.write(format(...args) + "\n");
}

const clients = new Map();

function client(r) {
  const key = JSON.stringify([r.auth, r.ak, r.sk, r.kind, r.endpoint ?? null, r.model ?? null]);
  if (!clients.has(key)) {
    const iam = r.auth === "iam";
    const Cls = r.kind === "chat" ? ChatCompletion : Completions;
    clients.set(key, new Cls({
      QIANFAN_AK: iam ? "" : r.ak,
      QIANFAN_SK: iam ? "" : r.sk,
      QIANFAN_ACCESS_KEY: iam ? r.ak : "",
      QIANFAN_SECRET_KEY: iam ? r.sk : "",
      Endpoint: r.endpoint ?? undefined,
    }));
  }
  return clients.get(key);
}

// What the SDK hands back carries the response headers too: leave them out.
function body(resp) {
  const { headers, ...rest } = resp ?? {};
  return rest;
}

async function call(r) {
  const params = { temperature: r.temperature, max_output_tokens: r.max_output_tokens, top_k: r.top_k,
    stop: r.stop, stream: r.stream ? true : undefined };
  const c = client(r);
  // The model argument: the SDK's default when none is named (an endpoint is given).
  const resp = r.kind === "chat"
    ? await c.chat({ messages: [{ role: "user", content: r.text }], ...params }, r.model ?? undefined)
    : await c.completions({ prompt: r.text, ...params }, r.model ?? undefined);
  if (!r.stream) return [body(resp)];
  const out = [];
  for await (const chunk of resp) out.push(body(chunk));     // the README's loop
  return out;
}

function failure(e) {
  const res = { ok: false, exception: e?.constructor?.name ?? typeof e, message: String(e?.message ?? e) };
  // An API error is thrown as new Error(JSON.stringify(reply)): its JSON body, headers included.
  try {
    const parsed = JSON.parse(res.message);
    if (parsed && typeof parsed === "object") res.error = body(parsed);
  } catch {
    // not an API error reply
  }
  return res;
}

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of rl) {
  if (!line.trim()) continue;
  let res;
  try {
    res = { ok: true, responses: await call(JSON.parse(line)) };
  } catch (e) {
    res = failure(e);
  }
  process.stdout.write(JSON.stringify(res) + "\n");
}
