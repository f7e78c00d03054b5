/* Wharf console: the playground's sample code, every language of every dialect, made here
   and nowhere else. Made in the browser, so the samples follow each edit of the form with
   no round trip, and a credential filled in (a new one, its secret shown once by the
   admin API) never travels back to the server.

   sampleCode(origin, dialect, path, body, cred) -> { curl, python, node?, go?, java? }
   cred: { key } or { ak, sk }, and filled: false while it holds the placeholders. */
"use strict";

const PLACEHOLDER = { api_key: { key: "<YOUR_WHARF_API_KEY>" }, qianfan_app: { ak: "<YOUR_QIANFAN_API_KEY>", sk: "<YOUR_QIANFAN_SECRET_KEY>" },
  sensenova: { ak: "<YOUR_SENSENOVA_ACCESS_KEY_ID>", sk: "<YOUR_SENSENOVA_SECRET_ACCESS_KEY>" } };

// Tab order and labels; a dialect shows the languages its samples exist in.
const SAMPLE_LANGS = { curl: "curl", python: "Python", node: "Node.js", go: "Go", java: "Java" };

function pyLit(v, ind = "") {
  if (v === null || v === undefined) return "None";
  if (v === true) return "True"; if (v === false) return "False";
  if (typeof v === "number") return String(v);
  if (typeof v === "string") return JSON.stringify(v);
  const ni = ind + "    ";
  if (Array.isArray(v)) return v.length ? "[\n" + v.map(x => ni + pyLit(x, ni)).join(",\n") + ",\n" + ind + "]" : "[]";
  const ks = Object.keys(v);
  return ks.length ? "{\n" + ks.map(k => ni + JSON.stringify(k) + ": " + pyLit(v[k], ni)).join(",\n") + ",\n" + ind + "}" : "{}";
}
const shq = (s) => "'" + String(s).replace(/'/g, "'\\''") + "'";
// A JSON string is a valid Go, Java and JavaScript string literal too.
const str = (s) => JSON.stringify(String(s));
const camel = (name) => name.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
const pascal = (name) => camel(name).replace(/^./, c => c.toUpperCase());

function sampleCode(origin, d, path, body, cred) {
  const url = origin + path; const json = JSON.stringify(body, null, 2); const stream = !!body.stream;
  const mark = cred.filled ? "" : "  # <- 替换为你的凭证 replace with your credential";
  let curl, py;
  if (d.startsWith("openai") || d === "welm") {
    curl = `curl -sS${stream ? " -N" : ""} ${shq(url)} \\\n  -H 'Content-Type: application/json' \\\n  -H ${shq("Authorization: Bearer " + cred.key)} \\\n  -d ${shq(json)}`;
  }
  if (d.startsWith("openai")) {
    const chat = d === "openai-chat"; const { stream: _s, ...params } = body;
    py = `from openai import OpenAI\n\nclient = OpenAI(\n    base_url=${JSON.stringify(origin + "/v1")},\n    api_key=${JSON.stringify(cred.key)},${mark}\n)\n` +
      `params = ${pyLit(params)}\n` + (stream
        ? `stream = client.${chat ? "chat.completions" : "completions"}.create(**params, stream=True)\nfor chunk in stream:\n    if chunk.choices:\n        print(chunk.choices[0].${chat ? "delta.content" : "text"} or "", end="", flush=True)\nprint()\n`
        : `resp = client.${chat ? "chat.completions" : "completions"}.create(**params)\nprint(resp.choices[0].${chat ? "message.content" : "text"})\n`);
  } else if (d === "welm") {
    py = `import requests\n\nresp = requests.post(\n    ${JSON.stringify(url)},\n    headers={"Authorization": "Bearer " + ${JSON.stringify(cred.key)}},${mark}\n    json=${pyLit(body, "    ")},\n    timeout=120,\n)\nresp.raise_for_status()\nfor choice in resp.json()["choices"]:\n    print(choice["text"])\n`;
  } else if (d.startsWith("qianfan")) {
    return qianfanSamples(origin, d === "qianfan-chat", path.split("/").pop(), body, cred);
  } else {
    const { stream: _s, ...params } = body;
    curl = `# SenseNova 使用 HS256 JWT (iss = access key id)，需要 PyJWT: pip install pyjwt\nTOKEN=$(python3 -c 'import jwt, time; now = int(time.time()); print(jwt.encode({"iss": "'${shq(cred.ak)}'", "exp": now + 1800, "nbf": now - 5}, "'${shq(cred.sk)}'", algorithm="HS256"))')\n` +
      `curl -sS${stream ? " -N" : ""} ${shq(url)} \\\n  -H 'Content-Type: application/json' \\\n  -H "Authorization: Bearer $TOKEN" \\\n  -d ${shq(json)}`;
    py = `import sensenova  # pip install sensenova\n\nsensenova.api_base = ${JSON.stringify(origin + "/v1")}\nsensenova.access_key_id = ${JSON.stringify(cred.ak)}${mark}\nsensenova.secret_access_key = ${JSON.stringify(cred.sk)}${mark}\n\nparams = ${pyLit(params)}\n` + (stream
      ? `for chunk in sensenova.Completion.create(**params, stream=True):\n    for choice in chunk["data"]["choices"]:\n        print(choice.get("delta", ""), end="", flush=True)\nprint()\n`
      : `resp = sensenova.Completion.create(**params)\nfor choice in resp["data"]["choices"]:\n    print(choice["text"])\n`);
  }
  return { curl, python: py };
}

/* A Qianfan custom service (seeds 001, 002, 004) through curl and the four official SDKs.
   All five authenticate the same way, with the application API Key / Secret Key (OAuth,
   access_token), the credential the playground itself sends with, so one fill serves every
   tab; the SDKs take an IAM Access Key / Secret Key the same way (QIANFAN_ACCESS_KEY). */
function qianfanSamples(origin, chat, endpoint, body, cred) {
  const url = `${origin}/rpc/2.0/ai_custom/v1/wenxinworkshop/${chat ? "chat" : "completions"}/${endpoint}`;
  const stream = !!body.stream; const { stream: _s, ...params } = body;
  const text = chat ? body.messages[body.messages.length - 1].content : body.prompt;
  const sampling = Object.entries(params).filter(([k]) => k !== "messages" && k !== "prompt");
  // gofmt puts one space before a line comment; Python, JavaScript and Java two.
  const mark = (c) => cred.filled ? "" : `${c === "go" ? " //" : "  " + c} <- 替换为你的凭证 replace with your credential`;

  const curl = `# 1. 获取 access_token (OAuth client_credentials)\nACCESS_TOKEN=$(curl -sS -X POST ${shq(origin + "/oauth/2.0/token?grant_type=client_credentials&client_id=" + cred.ak + "&client_secret=" + cred.sk)} \\\n  | python3 -c 'import sys, json; print(json.load(sys.stdin)["access_token"])')\n` +
    `# 2. 调用服务\ncurl -sS${stream ? " -N" : ""} -X POST ${shq(url)}"?access_token=$ACCESS_TOKEN" \\\n  -H 'Content-Type: application/json' \\\n  -d ${shq(JSON.stringify(body, null, 2))}`;

  const python = `import os\n\nos.environ["QIANFAN_BASE_URL"] = ${str(origin)}\nos.environ["QIANFAN_CONSOLE_API_BASE_URL"] = ${str(origin)}\n` +
    `os.environ["QIANFAN_AK"] = ${str(cred.ak)}${mark("#")}\nos.environ["QIANFAN_SK"] = ${str(cred.sk)}${mark("#")}\n\nimport qianfan  # pip install qianfan\n\n` +
    `client = qianfan.${chat ? "ChatCompletion" : "Completion"}(endpoint=${str(endpoint)})\nparams = ${pyLit(params)}\n` + (stream
      ? `for resp in client.do(**params, stream=True):\n    print(resp["body"]["result"], end="", flush=True)\nprint()\n`
      : `resp = client.do(**params)\nprint(resp["body"]["result"])\n`);

  const cls = chat ? "ChatCompletion" : "Completions";
  const node = `// 千帆 Node.js SDK: npm install @baiducloud/qianfan ; node sample.mjs\nimport { ${cls}, setEnvVariable } from "@baiducloud/qianfan";\n\n` +
    `setEnvVariable("QIANFAN_BASE_URL", ${str(origin)});\nconst client = new ${cls}({\n  QIANFAN_AK: ${str(cred.ak)},${mark("//")}\n  QIANFAN_SK: ${str(cred.sk)},${mark("//")}\n  Endpoint: ${str(endpoint)},\n});\n\n` +
    `async function main() {\n  const ${stream ? "stream" : "resp"} = await client.${chat ? "chat" : "completions"}(${JSON.stringify(body, null, 2).replace(/\n/g, "\n  ")});\n` +
    (stream ? `  for await (const chunk of stream) process.stdout.write(chunk.result);\n  process.stdout.write("\\n");\n` : `  console.log(resp.result);\n`) + `}\n\nmain();\n`;

  // gofmt aligns the values of a struct literal's consecutive fields.
  const fields = [[chat ? "Messages" : "Prompt", chat ? `[]qianfan.ChatCompletionMessage{qianfan.ChatCompletionUserMessage(${str(text)})}` : str(text)],
    ...sampling.map(([k, v]) => [pascal(k), Array.isArray(v) ? `[]string{${v.map(str).join(", ")}}` : (typeof v === "string" ? str(v) : String(v))])];
  const width = Math.max(...fields.map(([k]) => k.length)) + 1;
  const go = `// 千帆 Go SDK: go get github.com/baidubce/bce-qianfan-sdk/go/qianfan\npackage main\n\nimport (\n\t"context"\n\t"fmt"\n\t"os"\n\n\t"github.com/baidubce/bce-qianfan-sdk/go/qianfan"\n)\n\n` +
    `func main() {\n\tos.Setenv("QIANFAN_BASE_URL", ${str(origin)})\n\tos.Setenv("QIANFAN_AK", ${str(cred.ak)})${mark("go")}\n\tos.Setenv("QIANFAN_SK", ${str(cred.sk)})${mark("go")}\n\n` +
    `\tclient := qianfan.New${chat ? "ChatCompletion" : "Completion"}(qianfan.WithEndpoint(${str(endpoint)}))\n` +
    `\treq := &qianfan.${chat ? "ChatCompletionRequest" : "CompletionRequest"}{\n${fields.map(([k, v]) => `\t\t${(k + ":").padEnd(width)} ${v},\n`).join("")}\t}\n` +
    (stream
      ? `\tstream, err := client.Stream(context.TODO(), req)\n\tif err != nil {\n\t\tpanic(err)\n\t}\n\tdefer stream.Close()\n\tfor {\n\t\tr, err := stream.Recv()\n\t\tif err != nil {\n\t\t\tpanic(err)\n\t\t}\n\t\tif stream.IsEnd {\n\t\t\tbreak\n\t\t}\n\t\tfmt.Print(r.Result)\n\t}\n\tfmt.Println()\n}\n`
      : `\tresp, err := client.Do(context.TODO(), req)\n\tif err != nil {\n\t\tpanic(err)\n\t}\n\tfmt.Println(resp.Result)\n}\n`);

  // Java reads its base URL from the environment (or a .env file) only. Its builders take
  // Double and Integer, and the completion builder has no maxOutputTokens (SDK 0.1.6).
  const ints = new Set(["max_output_tokens", "top_k"]);
  const calls = sampling.filter(([k]) => chat || k !== "max_output_tokens").map(([k, v]) =>
    `\n                .${camel(k)}(${Array.isArray(v) ? `Arrays.asList(${v.map(str).join(", ")})` : typeof v === "string" ? str(v)
      : ints.has(k) ? String(v) : (Number.isInteger(v) ? v.toFixed(1) : String(v))})`).join("");
  const resp = chat ? "ChatResponse" : "CompletionResponse";
  const java = `// 千帆 Java SDK (Maven com.baidubce:qianfan). 运行前 Run with:\n//   export QIANFAN_BASE_URL=${origin}\n` +
    `import com.baidubce.qianfan.Qianfan;\nimport com.baidubce.qianfan.core.StreamIterator;\nimport com.baidubce.qianfan.core.auth.Auth;\n` +
    `import com.baidubce.qianfan.model.${chat ? "chat" : "completion"}.${resp};\n${sampling.some(([, v]) => Array.isArray(v)) ? "\nimport java.util.Arrays;\n" : ""}\n` +
    `public class Demo {\n    public static void main(String[] args) {\n` +
    `        Qianfan qianfan = new Qianfan(Auth.TYPE_OAUTH, ${str(cred.ak)}, ${str(cred.sk)});${mark("//")}\n` +
    (stream ? `        try (StreamIterator<${resp}> stream = ` : `        ${resp} resp = `) +
    `qianfan.${chat ? "chatCompletion()" : "completion()"}\n                .endpoint(${str(endpoint)})\n                ` +
    (chat ? `.addMessage("user", ${str(text)})` : `.prompt(${str(text)})`) + calls +
    (!chat && "max_output_tokens" in params ? `\n                // max_output_tokens: CompletionBuilder 没有 (not in the Java SDK's completion builder)` : "") +
    (stream ? `\n                .executeStream()) {\n            stream.forEachRemaining(chunk -> System.out.print(chunk.getResult()));\n        }\n        System.out.println();\n`
      : `\n                .execute();\n        System.out.println(resp.getResult());\n`) + `    }\n}\n`;

  return { curl, python, node, go, java };
}
