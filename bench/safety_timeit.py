"""Per-chunk cost of the stream guard (StreamGuard.feed) and of an input check.

    .venv/bin/python bench/safety_timeit.py                      # this tree
    git show d97ca96~1:wharf/platform/safety.py > /tmp/safety_before.py
    .venv/bin/python bench/safety_timeit.py /tmp/safety_before.py  # before issue 15 finding 8
"""
import importlib.util
import random
import sys
import timeit

path = sys.argv[1] if len(sys.argv) > 1 else "wharf/platform/safety.py"
spec = importlib.util.spec_from_file_location("safety_mod", path)
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
rng = random.Random(1)
words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(4, 10))) for _ in range(150)]
terms = words + ["敏感词%d" % i for i in range(50)]
lex = m.Lexicon(terms)
answer = ("The capital of France is Paris. It is known for the Eiffel Tower, museums such as the Louvre, "
          "and its cafés. 巴黎是法国的首都，以埃菲尔铁塔闻名。 ") * 4
chunks = [answer[i:i + 4] for i in range(0, len(answer), 4)]
def stream():
    g = lex.stream_guard()
    for c in chunks:
        g.feed(c)
    g.flush()
n = 200
best = min(timeit.repeat(stream, number=n, repeat=5)) / n
print(f"stream guard: {best / len(chunks) * 1e6:.2f} us per chunk "
      f"({len(chunks)} chunks of 4 chars, {len(terms)} terms)")
prompt = answer * 5
best = min(timeit.repeat(lambda: lex.find(prompt), number=200, repeat=5)) / 200
print(f"input check: {best * 1e6:.1f} us for {len(prompt)} chars")
zh = "巴黎是法国的首都，以埃菲尔铁塔和卢浮宫闻名，每年吸引数百万游客。" * 8
zchunks = [zh[i:i + 2] for i in range(0, len(zh), 2)]
def zstream():
    g = lex.stream_guard()
    for c in zchunks:
        g.feed(c)
    g.flush()
best = min(timeit.repeat(zstream, number=200, repeat=5)) / 200
print(f"stream guard, Chinese: {best / len(zchunks) * 1e6:.2f} us per chunk ({len(zchunks)} chunks of 2 chars)")
if len(sys.argv) == 1:          # this tree: also the pipeline's token gate (issue 15 finding 2)
    from wharf.api.pipeline import _TokenGate
    from wharf.engine.types import Chunk
    tok = [Chunk(index=0, text=" tok", token_ids=[i]) for i in range(128)]

    def gate():
        g = _TokenGate()
        for c in tok:
            g.push(c)
            g.release(c.text)
    best = min(timeit.repeat(gate, number=500, repeat=5)) / 500
    print(f"token gate: {best / len(tok) * 1e6:.2f} us per chunk")
