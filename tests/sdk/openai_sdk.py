"""Drives llmedge's /v1/chat/completions, routed to a `protocol: anthropic` pool, with the
official OpenAI Python SDK and prints what the SDK made of each answer as one JSON object.

usage: openai_sdk.py BASE_URL KEY PREFIX
"""
import json
import sys

import openai

base, key, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ASK = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]
out = {}

r = client.chat.completions.create(model=prefix + "x", messages=ASK, tools=[WEATHER])
out["create_tools"] = r.model_dump()


def streamed(model, include_usage, **kw):
    opts = {"include_usage": True} if include_usage else None
    calls, text, finish, usage, roles = {}, "", None, None, []
    for chunk in client.chat.completions.create(
        model=prefix + model, messages=ASK, stream=True, stream_options=opts, **kw
    ):
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            text += c.delta.content or ""
            for tc in c.delta.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    slot["id"] = tc.id
                if tc.function and tc.function.name:
                    slot["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    slot["arguments"] += tc.function.arguments
            finish = c.finish_reason or finish
    return {"roles": roles, "text": text, "calls": [calls[i] for i in sorted(calls)],
            "finish": finish, "usage": usage}


out["stream_tools"] = streamed("fixture-tools", True, tools=[WEATHER])
out["stream_text_no_usage"] = streamed("fixture-text", False)
try:
    client.chat.completions.create(model=prefix + "status-529", messages=ASK)
    out["overloaded"] = None
except openai.APIStatusError as e:
    out["overloaded"] = {"class": type(e).__name__, "status": e.status_code, "body": e.body}
print(json.dumps(out))
