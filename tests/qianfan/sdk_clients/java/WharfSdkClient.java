// Drives the official Qianfan Java SDK for tests/qianfan/test_qianfan_sdks.py: one request
// per stdin line (JSON), one JSON line back on stdout with what the SDK returned or raised.
//   {"auth": "oauth"|"iam", "ak", "sk", "kind": "chat"|"completions", "endpoint" | "model",
//    "text", "stream", "temperature"?, "max_output_tokens"? (chat), "top_k"? (completions), "stop"?}
// A client is kept per (auth, ak, sk), as an application keeps one: its token and its
// service list live as long as this process.

import com.baidubce.qianfan.Qianfan;
import com.baidubce.qianfan.core.StreamIterator;
import com.baidubce.qianfan.core.auth.Auth;
import com.baidubce.qianfan.core.builder.ChatBuilder;
import com.baidubce.qianfan.core.builder.CompletionBuilder;
import com.baidubce.qianfan.model.exception.ApiException;
import com.google.gson.ExclusionStrategy;
import com.google.gson.FieldAttributes;
import com.google.gson.FieldNamingPolicy;
import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

public class WharfSdkClient {
    private static final Gson GSON = new GsonBuilder()
            .setFieldNamingPolicy(FieldNamingPolicy.LOWER_CASE_WITH_UNDERSCORES)
            .serializeNulls()
            .setExclusionStrategies(new ExclusionStrategy() {
                public boolean shouldSkipField(FieldAttributes f) {
                    return f.getName().equals("headers") || f.getName().equals("rawResponse");
                }
                public boolean shouldSkipClass(Class<?> c) { return false; }
            })
            .create();
    private static final Map<String, Qianfan> CLIENTS = new HashMap<>();

    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        PrintStream out = new PrintStream(System.out, true, "UTF-8");
        String line;
        while ((line = in.readLine()) != null) {
            JsonObject req = GSON.fromJson(line, JsonObject.class);
            JsonObject res = new JsonObject();
            try {
                res.add("responses", call(req));
                res.addProperty("ok", true);
            } catch (ApiException e) {
                res.addProperty("ok", false);
                res.addProperty("exception", "ApiException");
                res.addProperty("message", e.getMessage());
                res.add("error", GSON.toJsonTree(e.getErrorResponse()));
            } catch (Exception e) {
                res.addProperty("ok", false);
                res.addProperty("exception", e.getClass().getSimpleName());
                res.addProperty("message", String.valueOf(e.getMessage()));
            }
            out.println(GSON.toJson(res));
        }
    }

    private static Qianfan client(JsonObject req) {
        String auth = req.get("auth").getAsString();
        String ak = req.get("ak").getAsString(), sk = req.get("sk").getAsString();
        return CLIENTS.computeIfAbsent(auth + "\n" + ak + "\n" + sk,
                k -> new Qianfan(auth.equals("iam") ? Auth.TYPE_IAM : Auth.TYPE_OAUTH, ak, sk));
    }

    private static String str(JsonObject req, String key) {
        JsonElement v = req.get(key);
        return v == null || v.isJsonNull() ? null : v.getAsString();
    }

    private static List<String> stop(JsonObject req) {
        if (!req.has("stop")) return null;
        List<String> stop = new ArrayList<>();
        for (JsonElement e : req.getAsJsonArray("stop")) stop.add(e.getAsString());
        return stop;
    }

    private static JsonArray call(JsonObject req) {
        Qianfan qianfan = client(req);
        boolean stream = req.has("stream") && req.get("stream").getAsBoolean();
        Double temperature = req.has("temperature") ? req.get("temperature").getAsDouble() : null;
        JsonArray responses = new JsonArray();
        if (req.get("kind").getAsString().equals("chat")) {
            ChatBuilder b = qianfan.chatCompletion().addMessage("user", str(req, "text"))
                    .temperature(temperature).stop(stop(req));
            if (str(req, "endpoint") != null) b.endpoint(str(req, "endpoint"));
            if (str(req, "model") != null) b.model(str(req, "model"));
            if (req.has("max_output_tokens")) b.maxOutputTokens(req.get("max_output_tokens").getAsInt());
            if (!stream) {
                responses.add(GSON.toJsonTree(b.execute()));
            } else {
                // The README's loop: hasNext()/next() to the end of the stream, then close().
                try (StreamIterator<?> it = b.executeStream()) {
                    while (it.hasNext()) responses.add(GSON.toJsonTree(it.next()));
                }
            }
        } else {
            CompletionBuilder b = qianfan.completion().prompt(str(req, "text"))
                    .temperature(temperature).stop(stop(req));
            if (str(req, "endpoint") != null) b.endpoint(str(req, "endpoint"));
            if (str(req, "model") != null) b.model(str(req, "model"));
            if (req.has("top_k")) b.topK(req.get("top_k").getAsInt());
            if (!stream) {
                responses.add(GSON.toJsonTree(b.execute()));
            } else {
                try (StreamIterator<?> it = b.executeStream()) {
                    while (it.hasNext()) responses.add(GSON.toJsonTree(it.next()));
                }
            }
        }
        return responses;
    }
}
