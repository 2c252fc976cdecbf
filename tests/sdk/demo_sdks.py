"""Both official SDKs against `llmedge demo`: Messages on a translating pool (the built-in mock's
chat) and on the mock standing in for Anthropic, and OpenAI chat on that Anthropic pool. Prints
what the SDKs made of each answer as one JSON object.

usage: demo_sdks.py BASE_URL KEY
"""
import json
import sys

import anthropic
import openai

base, key = sys.argv[1], sys.argv[2]
a = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
o = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
TOOL = {"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
ASK = [{"role": "user", "content": "look it up"}]
out = {}
for model in ["mock/llama3", "claude/sonnet"]:
    with a.messages.stream(model=model, max_tokens=5, messages=ASK, tools=[TOOL]) as s:
        final = s.get_final_message()
    plain = a.messages.create(model=model, max_tokens=4, messages=ASK)
    out[model] = {"stream": final.model_dump(), "plain": plain.model_dump()}
calls, finish, usage = {}, None, None
for chunk in o.chat.completions.create(
    model="claude/sonnet", messages=ASK, stream=True, stream_options={"include_usage": True},
    max_tokens=3, tools=[{"type": "function", "function": {"name": "lookup", "parameters": TOOL["input_schema"]}}],
):
    usage = chunk.usage.model_dump() if chunk.usage else usage
    for c in chunk.choices:
        for tc in c.delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"name": None, "arguments": ""})
            slot["name"] = (tc.function.name if tc.function else None) or slot["name"]
            slot["arguments"] += (tc.function.arguments if tc.function else None) or ""
        finish = c.finish_reason or finish
out["openai_on_claude"] = {"calls": [calls[i] for i in sorted(calls)], "finish": finish, "usage": usage}
print(json.dumps(out))
