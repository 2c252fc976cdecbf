#!lua name=llmedge_1
-- llmedge's shared limit counters, version 1. Gateways call llmedge_admit_1, llmedge_settle_1,
-- llmedge_renew_1 and llmedge_merge_1 by name; a later version loads as llmedge_2 beside this
-- one, so old and new gateways share one Redis during a rolling upgrade. Every key a call
-- touches belongs to one tenant and carries its hash tag, so calls also run on Redis Cluster.
--
-- Per scope (a tenant, or a key) K = <prefix>{<tenant>}:<scope id>:
--   K:w[:m=<glob>]  hash   rate buckets of 6 s: r<n> requests, t<n> settled tokens;
--                          rt = tokens reserved by live leases
--   K:l[:m=<glob>]  zset   live leases "<lease>:<tokens>", score = expiry (ms, Redis time)
--   K:s             hash   spend in micro-USD: d<day>, m<month>; res = reserved by live leases
--   K:r             zset   budget reservations "<lease>:<micro-USD>", score = expiry
-- A rate counts every bucket that overlaps the last 60 s, so no 60 s span ever holds more
-- than the limit. Time comes from TIME on the server, never from a gateway.

local BUCKET = 6000
local SPAN = 10 -- buckets before the current one that still overlap the last minute
local WINDOW_TTL = 180000
local SPEND_TTL = 40 * 86400000
-- how long a settlement or merge is remembered, against a resend after a timeout
local DONE_TTL = 120000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Howard Hinnant's civil-from-days: the UTC year and month of a day number
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

local function days_from_civil(y, m)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100)
    + math.floor((153 * mp + 2) / 5)
  return era * 146097 + doe - 719468
end

-- day id, month id (year*12 + month-1), ms to the next UTC midnight and to the next month
local function calendar(now)
  local day = math.floor(now / 86400000)
  local y, m = civil(day)
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  local next_month = days_from_civil(ny, nm) * 86400000
  return day, y * 12 + m - 1, (day + 1) * 86400000 - now, next_month - now
end

-- sets key k to expire in ms unless it already lives longer (a key without expiry gets one);
-- gateways with different lease_ms never cut each other's keys short
local function touch(k, ms)
  if tonumber(redis.call('PTTL', k)) < ms then redis.call('PEXPIRE', k, ms) end
end

-- a call seen before (a settlement or merge resent after a timeout) is not applied twice
local function first_time(marker)
  return redis.call('SET', marker, 1, 'NX', 'PX', DONE_TTL) ~= false
end

local function amount(member)
  return tonumber(string.match(member, ':(%d+)$') or '0') or 0
end

-- drops expired leases of zset z and gives their amounts back in field f of hash h
-- (no lease left, or the zset itself expired: nothing is reserved any more)
local function reap(z, h, f, now)
  local dead = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  if #dead > 0 then
    local sum = 0
    for _, m in ipairs(dead) do sum = sum + amount(m) end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
    if sum > 0 and redis.call('HEXISTS', h, f) == 1
      and tonumber(redis.call('HINCRBY', h, f, -sum)) < 0 then
      redis.call('HSET', h, f, 0)
    end
  end
  if redis.call('EXISTS', z) == 0 then redis.call('HDEL', h, f) end
end

-- gives `amount` back in field f of hash h (never below zero, never creating h)
local function give_back(h, f, amount)
  if amount > 0 and redis.call('HEXISTS', h, f) == 1
    and tonumber(redis.call('HINCRBY', h, f, -amount)) < 0 then
    redis.call('HSET', h, f, 0)
  end
end

-- the live buckets of window hash w (stale ones deleted) and its reserved tokens
local function buckets(w, cur)
  local all = redis.call('HGETALL', w)
  local r, t, stale, reserved = {}, {}, {}, 0
  for i = 1, #all, 2 do
    local f, v = all[i], tonumber(all[i + 1])
    local b = tonumber(string.sub(f, 2))
    if f == 'rt' then
      reserved = math.max(v, 0)
    elseif b and b < cur - SPAN then
      stale[#stale + 1] = f
    elseif string.sub(f, 1, 1) == 'r' then
      r[b] = v
    elseif b then
      t[b] = v
    end
  end
  for i = 1, #stale, 1000 do
    redis.call('HDEL', w, unpack(stale, i, math.min(i + 999, #stale)))
  end
  return r, t, reserved
end

local function total(tbl)
  local s = 0
  for _, v in pairs(tbl) do s = s + v end
  return s
end

-- ms until `cost` more fits under `limit` as the oldest buckets leave the window
local function wait(tbl, held, cost, limit, cur, now)
  local used = total(tbl) + held
  if used + cost <= limit then return 0 end
  for b = cur - SPAN, cur do
    used = used - (tbl[b] or 0)
    if used + cost <= limit then return math.max((b + 1 + SPAN) * BUCKET - now, 1) end
  end
  return (cur + 1 + SPAN) * BUCKET - now + 60000
end

-- x-ratelimit trio kept for the most constrained slot: limit, remaining, reset ms
local function keep(h, i, limit, used_after, reset)
  local remaining = math.max(math.floor(limit - used_after), 0)
  if h[i] < 0 or remaining < h[i + 1] then
    h[i], h[i + 1], h[i + 2] = limit, remaining, reset
  end
end

local KIND = {rpm = 1, tpm = 2, concurrency = 3, budget_day = 4, budget_month = 5}

local function check_slot(keys, c, p, st)
  local w, l = keys[c.w], keys[c.l]
  if c.conc or c.tpm then reap(l, w, 'rt', st.now) end
  if not (c.rpm or c.tpm) then
    if c.conc and redis.call('ZCARD', l) + 1 > c.conc then return 'concurrency', c.conc, 1000 end
    return
  end
  local r, t, reserved = buckets(w, st.cur)
  if c.rpm then
    local used = total(r)
    local reset = wait(r, 0, 1, c.rpm, st.cur, st.now)
    keep(st.h, 1, c.rpm, used + 1, reset)
    if used + 1 > c.rpm then return 'rpm', c.rpm, reset end
  end
  if c.tpm then
    local used = total(t) + reserved
    local reset = wait(t, reserved, p.tokens, c.tpm, st.cur, st.now)
    keep(st.h, 4, c.tpm, used + p.tokens, reset)
    if used + p.tokens > c.tpm then return 'tpm', c.tpm, reset end
  end
  if c.conc and redis.call('ZCARD', l) + 1 > c.conc then
    return 'concurrency', c.conc, 1000
  end
end

local function check_budget(keys, c, p, st)
  local s, r = keys[c.s], keys[c.r]
  reap(r, s, 'res', st.now)
  if not (c.day or c.month) then return end
  local v = redis.call('HMGET', s, 'd' .. st.day, 'm' .. st.month, 'res')
  local held = math.max(tonumber(v[3] or '0') or 0, 0) + p.micro
  if c.day and (tonumber(v[1] or '0') or 0) + held > c.day then
    return 'budget_day', c.day, st.until_day
  end
  if c.month and (tonumber(v[2] or '0') or 0) + held > c.month then
    return 'budget_month', c.month, st.until_month
  end
end

local function commit(keys, p, st)
  local expiry = st.now + p.ttl
  for _, c in ipairs(p.c) do
    if c.k == 's' then
      local w = keys[c.w]
      -- a window holds only what a limit reads: requests for rpm, tokens for tpm
      if c.rpm then redis.call('HINCRBY', w, 'r' .. st.cur, 1) end
      local held = c.tpm and p.tokens or 0
      if c.conc or c.tpm then
        -- the lease holds the tokens reserved against tpm (none without a tpm limit)
        redis.call('ZADD', keys[c.l], expiry, p.lease .. ':' .. held)
        touch(keys[c.l], 3 * p.ttl)
        if held > 0 then redis.call('HINCRBY', w, 'rt', held) end
      end
      if c.rpm or held > 0 then touch(w, math.max(WINDOW_TTL, 3 * p.ttl)) end
    elseif p.micro > 0 then
      redis.call('ZADD', keys[c.r], expiry, p.lease .. ':' .. p.micro)
      touch(keys[c.r], 3 * p.ttl)
      redis.call('HINCRBY', keys[c.s], 'res', p.micro)
      touch(keys[c.s], SPEND_TTL)
    end
  end
end

-- args[1]: {lease, ttl, tokens, micro, c = [{k='s', w, l, rpm?, tpm?, conc?, scope} |
-- {k='b', s, r, day?, month?, scope}]}; every check passes and all are reserved, or none.
-- Returns {ok, kind, scope, retry_ms, now, req limit, remaining, reset, tok limit, remaining,
-- reset, refusing limit}.
local function admit(keys, args)
  local p = cjson.decode(args[1])
  local now = now_ms()
  local day, month, until_day, until_month = calendar(now)
  local st = {now = now, cur = math.floor(now / BUCKET), day = day, month = month,
    until_day = until_day, until_month = until_month, h = {-1, -1, -1, -1, -1, -1}}
  for _, c in ipairs(p.c) do
    local kind, limit, retry
    if c.k == 's' then
      kind, limit, retry = check_slot(keys, c, p, st)
    else
      kind, limit, retry = check_budget(keys, c, p, st)
    end
    if kind then
      local h = st.h
      return {0, KIND[kind], c.scope, retry, now, h[1], h[2], h[3], h[4], h[5], h[6], limit}
    end
  end
  commit(keys, p, st)
  local h = st.h
  return {1, 0, -1, 0, now, h[1], h[2], h[3], h[4], h[5], h[6], 0}
end

-- drops spend fields of days and months before the current ones
local function prune_spend(s, day, month)
  local stale = {}
  for _, f in ipairs(redis.call('HKEYS', s)) do
    local n = tonumber(string.sub(f, 2))
    local kind = string.sub(f, 1, 1)
    if n and ((kind == 'd' and n < day) or (kind == 'm' and n < month)) then
      stale[#stale + 1] = f
    end
  end
  for i = 1, #stale, 1000 do
    redis.call('HDEL', s, unpack(stale, i, math.min(i + 999, #stale)))
  end
end

-- args[1]: {lease, micro, at, actual, cost, w = [[window, leases, leased, held, tpm], ...],
-- s = [[spend, reservations, budgeted], ...]}; the last key marks this settlement done.
-- The leases go, the reservation is replaced by what was used, spend is charged. A lease
-- already reaped gave its amount back then. Returns 0 for a settlement already applied.
local function settle(keys, args)
  if not first_time(keys[#keys]) then return 0 end
  local p = cjson.decode(args[1])
  local now = now_ms()
  local cur = math.floor(now / BUCKET)
  local at = math.floor(p.at / BUCKET)
  for _, e in ipairs(p.w) do
    local w = keys[e[1]]
    if e[3] == 1 and redis.call('ZREM', keys[e[2]], p.lease .. ':' .. e[4]) == 1 then
      give_back(w, 'rt', e[4])
    end
    if e[5] == 1 and p.actual > 0 and at >= cur - SPAN then
      redis.call('HINCRBY', w, 't' .. at, p.actual)
      touch(w, WINDOW_TTL)
    end
  end
  local day, month = calendar(now)
  for _, e in ipairs(p.s) do
    local s = keys[e[1]]
    if e[3] == 1 and p.micro > 0 and redis.call('ZREM', keys[e[2]], p.lease .. ':' .. p.micro) == 1 then
      give_back(s, 'res', p.micro)
    end
    if p.cost > 0 then
      redis.call('HINCRBY', s, 'm' .. month, p.cost)
      if tonumber(redis.call('HINCRBY', s, 'd' .. day, p.cost)) == p.cost then
        -- a new day: older days and months go, the spend's expiry moves on
        prune_spend(s, day, month)
        touch(s, SPEND_TTL)
      end
    end
  end
  return now
end

-- args[1]: {ttl, z = [[zset, member, hash], ...]}: pushes the expiry of live leases out by
-- ttl, and that of the hash holding their reserved amount (a lease already reaped stays gone).
-- Returns how many were renewed.
local function renew(keys, args)
  local p = cjson.decode(args[1])
  local expiry = now_ms() + p.ttl
  local n = 0
  for _, zm in ipairs(p.z) do
    n = n + redis.call('ZADD', keys[zm[1]], 'XX', 'CH', expiry, zm[2])
    touch(keys[zm[1]], 3 * p.ttl)
    touch(keys[zm[3]], math.max(WINDOW_TTL, 3 * p.ttl))
  end
  return n
end

-- args[1]: {w = [[w, requests, tokens], ...], s = [[s, micro], ...]}: what a gateway counted
-- on its own while Redis was away, added to the current bucket, day and month; the last key
-- marks this merge done. Returns 0 for a merge already applied.
local function merge(keys, args)
  if not first_time(keys[#keys]) then return 0 end
  local p = cjson.decode(args[1])
  local now = now_ms()
  local cur = math.floor(now / BUCKET)
  for _, e in ipairs(p.w) do
    local w = keys[e[1]]
    if e[2] > 0 then redis.call('HINCRBY', w, 'r' .. cur, e[2]) end
    if e[3] > 0 then redis.call('HINCRBY', w, 't' .. cur, e[3]) end
    touch(w, WINDOW_TTL)
  end
  local day, month = calendar(now)
  for _, e in ipairs(p.s) do
    local s = keys[e[1]]
    redis.call('HINCRBY', s, 'd' .. day, e[2])
    redis.call('HINCRBY', s, 'm' .. month, e[2])
    touch(s, SPEND_TTL)
  end
  return now
end

-- keys[1..n]: spend hashes; returns {day spend, month spend, ...} for budget gauges
local function spend(keys, args)
  local day, month = calendar(now_ms())
  local out = {}
  for _, s in ipairs(keys) do
    local v = redis.call('HMGET', s, 'd' .. day, 'm' .. month)
    out[#out + 1] = tonumber(v[1] or '0') or 0
    out[#out + 1] = tonumber(v[2] or '0') or 0
  end
  return out
end

redis.register_function('llmedge_admit_1', admit)
redis.register_function('llmedge_settle_1', settle)
redis.register_function('llmedge_renew_1', renew)
redis.register_function('llmedge_merge_1', merge)
redis.register_function{function_name = 'llmedge_spend_1', callback = spend, flags = {'no-writes'}}
