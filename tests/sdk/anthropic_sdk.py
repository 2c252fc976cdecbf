"""Drives llmedge's /v1/messages with the official Anthropic Python SDK and prints what the
SDK made of each answer as one JSON object (the Rust integration test asserts on it).

usage: anthropic_sdk.py BASE_URL KEY PREFIX [RPM1_KEY]   (PREFIX routes to the pool under test,
"tr/"; RPM1_KEY is a key allowed one request a minute)
"""
import json
import sys

import anthropic

base, key, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
slow_key = sys.argv[4] if len(sys.argv) > 4 else None
client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
out = {}


def failure(call):
    try:
        call()
    except anthropic.APIStatusError as e:
        return {"class": type(e).__name__, "status": e.status_code, "body": e.body}
    except anthropic.APIError as e:
        return {"class": type(e).__name__, "message": str(e)}
    return None


def streamed(model, **kw):
    with client.messages.stream(model=prefix + model, max_tokens=200, messages=ASK, **kw) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    return {"events": kinds, "final": final.model_dump()}


m = client.messages.create(model=prefix + "fixture-tools", max_tokens=200, messages=ASK, tools=[WEATHER])
out["create_tools"] = m.model_dump()
out["stream_tools"] = streamed("fixture-tools", tools=[WEATHER])
out["stream_thinking"] = streamed("fixture-thinking")
with client.messages.stream(model=prefix + "fixture-text", max_tokens=50, messages=ASK) as s:
    out["text_stream"] = "".join(s.text_stream)
out["stop_sequence"] = streamed("fixture-stop_sequence", stop_sequences=["###"])["final"]
count = client.messages.count_tokens(model=prefix + "fixture-text", messages=ASK, tools=[WEATHER])
out["count_tokens"] = count.input_tokens
out["mid_stream_error"] = failure(lambda: streamed("fixture-error"))
out["upstream_400"] = failure(
    lambda: client.messages.create(model=prefix + "status-400", max_tokens=10, messages=ASK)
)
out["unknown_model"] = failure(
    lambda: client.messages.create(model="nope/x", max_tokens=10, messages=ASK)
)
bad = anthropic.Anthropic(base_url=base, api_key="sk-not-a-key", max_retries=0)
out["bad_key"] = failure(lambda: bad.messages.create(model=prefix + "x", max_tokens=10, messages=ASK))
if slow_key:
    slow = anthropic.Anthropic(base_url=base, api_key=slow_key, max_retries=0)
    once = lambda: slow.messages.create(model=prefix + "x", max_tokens=5, messages=ASK)
    once()
    out["rate_limited"] = failure(once)
# last: an upstream 5xx takes the backend out of rotation for a while
out["overloaded"] = failure(
    lambda: client.messages.create(model=prefix + "status-529", max_tokens=10, messages=ASK)
)
print(json.dumps(out))
