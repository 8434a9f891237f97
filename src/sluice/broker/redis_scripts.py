"""Lua scripts of the Redis broker: every multi-step operation is one atomic script call.

Each script touches only the keys of one queue, all of which share the hash tag
``{<namespace>:<queue>}`` (so a script runs on one Redis Cluster slot). ``KEYS[1]`` is that key
prefix; the script derives the other names from it. ``ARGV[1]`` is always the caller's clock in
milliseconds, so visibility, delays, retention and deduplication follow the broker's clock.

Keys under the prefix ``P``:

====== =========================================================================================
``c``  hash: queue configuration (``vt``/``ret`` in ms, ``mrc``, ``dlq``, ``fifo``, ``json``),
       ``ver`` (changes on every update) and ``gen`` (changes on purge; in receipts)
``s``  stream: every stored, not delayed message; consumer group ``g``, one consumer ``c``
``i``  sorted set: delivered entries by visibility deadline (ms)
``f``  hash: entry id -> first receive time (ms)
``d``  sorted set: delayed messages by due time; ``dm`` hash holds their fields (JSON)
``n``  counter: FIFO sequence numbers and delayed-message order
``x``  sorted set: FIFO deduplication ids by expiry; ``xm`` hash: dedup id -> ``seq:message id``
``q:G`` list: FIFO group ``G``'s waiting entry ids, in order
``r``  sorted set: FIFO groups with waiting messages and none in flight (score: head sequence)
``gl`` hash: FIFO group -> number of its messages in flight
``o``  hash: outbox, entry id -> JSON ``[target queue, fields]`` on its way to another queue
``b:T`` string: result of send batch ``T`` (expires), so a retried send is not stored twice
``t:K`` string: transfer ``K`` already received (expires), so a retried move is not doubled
====== =========================================================================================

Receive counts are the consumer group's delivery counters (``XPENDING``); a receipt handle is
``<gen>.<entry id>.<delivery count>``, so each receive yields a new one and only the latest matches.
"""

from __future__ import annotations

PRELUDE = r"""
local P = KEYS[1]
local S, G, CONSUMER = P .. 's', 'g', 'c'
local INF, FIRST, DL, DM, GL, READY, OUTBOX = P .. 'i', P .. 'f', P .. 'd', P .. 'dm', P .. 'gl',
  P .. 'r', P .. 'o'
local now = tonumber(ARGV[1])

local function load_config()
  local v = redis.call('HMGET', P .. 'c', 'vt', 'ret', 'mrc', 'dlq', 'fifo', 'gen', 'ver')
  if not v[6] then return nil end
  return {vt = tonumber(v[1]), ret = tonumber(v[2]), mrc = tonumber(v[3] or ''),
    dlq = v[4] or '', fifo = v[5] == '1', gen = v[6], ver = v[7]}
end

local function field(flat, name)
  for k = 1, #flat, 2 do
    if flat[k] == name then return flat[k + 1] end
  end
  return nil
end

-- A copy of the field list with `name` set to `value` (or removed when value is nil).
local function with_field(flat, name, value)
  local out = {}
  for k = 1, #flat, 2 do
    if flat[k] ~= name then
      out[#out + 1] = flat[k]
      out[#out + 1] = flat[k + 1]
    end
  end
  if value then
    out[#out + 1] = name
    out[#out + 1] = value
  end
  return out
end

local function entry(id)
  local r = redis.call('XRANGE', S, id, id)
  if #r == 0 then return nil end
  return r[1][2]
end

local function prior_count(id)
  local p = redis.call('XPENDING', S, G, id, id, 1)
  if #p == 0 then return 0 end
  return tonumber(p[1][4])
end

local function id_less(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end

-- Store a message that is due now: into the stream, and for FIFO onto its group's list.
local function append(c, flat)
  local id = redis.call('XADD', S, '*', unpack(flat))
  if c.fifo then
    local g = field(flat, 'g')
    if redis.call('RPUSH', P .. 'q:' .. g, id) == 1 and redis.call('HEXISTS', GL, g) == 0 then
      redis.call('ZADD', READY, 'NX', field(flat, 'n'), g)
    end
  end
  return id
end

-- One in-flight message of FIFO group g is done; the last one makes the group ready again.
local function unlock(g)
  if redis.call('HINCRBY', GL, g, -1) <= 0 then
    redis.call('HDEL', GL, g)
    local head = redis.call('LINDEX', P .. 'q:' .. g, 0)
    if head then
      local flat = entry(head)
      redis.call('ZADD', READY, 'NX', flat and field(flat, 'n') or 0, g)
    end
  end
end

-- Remove a message from the queue for good (deleted, dead-lettered, expired, moved).
local function forget(c, id, flat)
  local was_in_flight = redis.call('ZREM', INF, id) == 1
  redis.call('XACK', S, G, id)
  redis.call('XDEL', S, id)
  redis.call('HDEL', FIRST, id)
  if c.fifo then
    local g = field(flat, 'g')
    if was_in_flight then
      unlock(g)
    else
      local q = P .. 'q:' .. g
      redis.call('LREM', q, 1, id)
      if redis.call('LLEN', q) == 0 then redis.call('ZREM', READY, g) end
    end
  end
end

-- Park a message in the outbox for `target` (another slot); the client completes the move.
local function to_outbox(c, id, flat, target, reason)
  local moved = with_field(with_field(flat, 'r', reason), 'n', nil)
  redis.call('HSET', OUTBOX, id, cjson.encode({target, moved}))
  forget(c, id, flat)
end

-- Messages due now leave the delayed set; those already past retention are dropped.
local function promote(c)
  local due = redis.call('ZRANGEBYSCORE', DL, '-inf', now, 'LIMIT', 0, 1000)
  for _, m in ipairs(due) do
    local packed = redis.call('HGET', DM, m)
    redis.call('ZREM', DL, m)
    redis.call('HDEL', DM, m)
    if packed then
      local flat = cjson.decode(packed)
      if tonumber(field(flat, 't')) > now - c.ret then append(c, flat) end
    end
  end
end

-- Retention, checked at the head of the stream (the oldest stored messages).
local function expire_old(c)
  local head = redis.call('XRANGE', S, '-', '+', 'COUNT', 20)
  for _, e in ipairs(head) do
    if tonumber(field(e[2], 't')) > now - c.ret then break end
    forget(c, e[1], e[2])
  end
end

-- FIFO: in-flight messages whose visibility ended go back to the front of their group, in order.
local function reap(c)
  if not c.fifo then return end
  local expired = redis.call('ZRANGEBYSCORE', INF, '-inf', now, 'LIMIT', 0, 1000)
  table.sort(expired, function(a, b) return id_less(b, a) end)
  for _, id in ipairs(expired) do
    redis.call('ZREM', INF, id)
    local flat = entry(id)
    if flat then
      local g = field(flat, 'g')
      redis.call('LPUSH', P .. 'q:' .. g, id)
      unlock(g)
    else
      redis.call('XACK', S, G, id)
      redis.call('HDEL', FIRST, id)
    end
  end
end

local function housekeeping(c)
  promote(c)
  expire_old(c)
  reap(c)
end

-- Standard queue: hand up to n visible messages to take(id, flat, prior receive count), which
-- says whether it used one. Messages whose visibility ended first, then never-delivered ones.
local function select_standard(n, take)
  local got, seen = 0, {}
  local progress = true
  while got < n and progress do
    progress = false
    local ids = redis.call('ZRANGEBYSCORE', INF, '-inf', now, 'LIMIT', 0, n - got + #seen)
    for _, id in ipairs(ids) do
      if not seen[id] and got < n then
        seen[id] = true
        seen[#seen + 1] = id
        progress = true
        local flat = entry(id)
        if flat then
          if take(id, flat, prior_count(id)) then got = got + 1 end
        else
          redis.call('ZREM', INF, id)
          redis.call('XACK', S, G, id)
          redis.call('HDEL', FIRST, id)
        end
      end
    end
  end
  while got < n do
    local r = redis.call('XREADGROUP', 'GROUP', G, CONSUMER, 'COUNT', n - got, 'STREAMS', S, '>')
    if not r or #r[1][2] == 0 then break end
    for _, e in ipairs(r[1][2]) do
      if take(e[1], e[2], 0) then got = got + 1 end
    end
  end
  return got
end

-- FIFO queue: heads of ready groups, oldest group first, several of one group in order. With
-- `lock`, a group that handed out messages is locked until they are done.
local function select_fifo(n, take, lock)
  local got = 0
  while got < n do
    local groups = redis.call('ZRANGE', READY, 0, 0)
    if #groups == 0 then break end
    local g = groups[1]
    redis.call('ZREM', READY, g)
    local q = P .. 'q:' .. g
    local taken = 0
    while got < n do
      local id = redis.call('LPOP', q)
      if not id then break end
      local flat = entry(id)
      if flat then
        if take(id, flat, prior_count(id)) then
          got = got + 1
          taken = taken + 1
        end
      else
        redis.call('XACK', S, G, id)
        redis.call('HDEL', FIRST, id)
      end
    end
    if lock and taken > 0 then
      redis.call('HINCRBY', GL, g, taken)
    else
      local head = redis.call('LINDEX', q, 0)
      if head then
        local flat = entry(head)
        redis.call('ZADD', READY, 'NX', flat and field(flat, 'n') or 0, g)
      end
    end
  end
  return got
end

local function select_visible(c, n, take, lock)
  if c.fifo then return select_fifo(n, take, lock) end
  return select_standard(n, take)
end

-- Whether a receipt is the latest one handed out for a message still in the queue (an entry in
-- the PEL is always still in the stream: whatever removes an entry acknowledges it first).
local function held(c, gen, id, count)
  return gen == c.gen and prior_count(id) == tonumber(count)
end

-- The fields `forget` needs: FIFO reads the message group from the entry.
local function fields_for_forget(c, id)
  if c.fifo then return entry(id) or {} end
  return {}
end
"""

# ARGV: now, ver, batch token, dedup window ms, and the batch as one JSON array of
# [id, body, attributes JSON ('' for none), delay ms, group id, deduplication id] (one argument,
# decoded by cjson in C: far cheaper than six arguments per message). Returns '' for a standard
# queue, else a JSON list with per message 'N:<sequence>' or 'D:<sequence>:<original id>'.
SEND = r"""
-- A message that needs more than one XADD: FIFO, delayed, or with attributes.
local function send_one(c, m, out)
  local flat = {'i', m[1], 't', ARGV[1], 'b', m[2]}
  if m[3] ~= '' then
    flat[7] = 'a'
    flat[8] = m[3]
  end
  local seq, duplicate = nil, nil
  if c.fifo then
    local g, dedup = m[5], m[6]
    duplicate = redis.call('HGET', P .. 'xm', dedup)
    if not duplicate then
      seq = tostring(redis.call('INCR', P .. 'n'))
      redis.call('HSET', P .. 'xm', dedup, seq .. ':' .. m[1])
      redis.call('ZADD', P .. 'x', now + tonumber(ARGV[4]), dedup)
      for _, v in ipairs({'g', g, 'd', dedup, 'n', seq}) do flat[#flat + 1] = v end
    end
  end
  if duplicate then
    out[#out + 1] = 'D:' .. duplicate
  else
    if m[4] > 0 then
      local member = string.format('%016d', tonumber(seq or redis.call('INCR', P .. 'n')))
      redis.call('ZADD', DL, now + m[4], member)
      redis.call('HSET', DM, member, cjson.encode(flat))
    else
      append(c, flat)
    end
    out[#out + 1] = 'N:' .. (seq or '')
  end
end

local c = load_config()
if not c then return redis.error_reply('NOQUEUE') end
if c.ver ~= ARGV[2] then return redis.error_reply('STALE') end
local token = P .. 'b:' .. ARGV[3]
local done = redis.call('GET', token)
if done then return done end
if c.fifo then
  local old = redis.call('ZRANGEBYSCORE', P .. 'x', '-inf', now, 'LIMIT', 0, 1000)
  for _, d in ipairs(old) do
    redis.call('HDEL', P .. 'xm', d)
    redis.call('ZREM', P .. 'x', d)
  end
end
local out = {}
for _, m in ipairs(cjson.decode(ARGV[5])) do
  if not c.fifo and m[4] == 0 and m[3] == '' then
    -- the common case, kept to one command: a plain message due now
    redis.call('XADD', S, '*', 'i', m[1], 't', ARGV[1], 'b', m[2])
  else
    send_one(c, m, out)
  end
end
local result = c.fifo and cjson.encode(out) or ''
redis.call('SET', token, result, 'EX', 300)
return result
"""

# ARGV: now, max messages, visibility timeout ms (-1: the queue's), '1' when the client saw the
# dead-letter queue exist ('' makes messages past max_receive_count be delivered as usual).
# Returns JSON [gen, ver, outbox size, [[entry id, receive count, first receive ms, fields], ...]]
# (one string: far cheaper for the client to parse than nested replies).
RECEIVE = r"""
local c = load_config()
if not c then return redis.error_reply('NOQUEUE') end
local vt = tonumber(ARGV[3])
if vt < 0 then vt = c.vt end
housekeeping(c)
local deadline, out = now + vt, {}
local to_dlq = c.mrc and c.dlq ~= '' and ARGV[4] == '1'
local reason = 'maxReceiveCount ' .. tostring(c.mrc) .. ' reached'
select_visible(c, tonumber(ARGV[2]), function(id, flat, prior)
  if to_dlq and prior >= c.mrc then
    to_outbox(c, id, flat, c.dlq, reason)
    return false
  end
  local count = prior + 1
  if prior > 0 or c.fifo then
    redis.call('XCLAIM', S, G, CONSUMER, 0, id, 'FORCE', 'RETRYCOUNT', count, 'JUSTID')
  end
  redis.call('ZADD', INF, deadline, id)
  local first = prior > 0 and redis.call('HGET', FIRST, id)
  if not first then
    first = ARGV[1]
    redis.call('HSET', FIRST, id, first)
  end
  out[#out + 1] = {id, count, first, flat}
  return true
end, true)
return cjson.encode({c.gen, c.ver, redis.call('HLEN', OUTBOX), out})
"""

# ARGV: now, then per receipt: gen, entry id, receive count. Returns 1/0 per receipt.
DELETE = r"""
local c = load_config()
if not c then return redis.error_reply('NOQUEUE') end
local out = {}
for k = 2, #ARGV, 3 do
  local ok = held(c, ARGV[k], ARGV[k + 1], ARGV[k + 2])
  if ok then forget(c, ARGV[k + 1], fields_for_forget(c, ARGV[k + 1])) end
  out[#out + 1] = ok and 1 or 0
end
return out
"""

# ARGV: now, gen, entry id, receive count, new timeout ms. Only a message still in flight.
CHANGE_VISIBILITY = r"""
local c = load_config()
if not c then return redis.error_reply('NOQUEUE') end
if not held(c, ARGV[2], ARGV[3], ARGV[4]) then return 0 end
local deadline = redis.call('ZSCORE', INF, ARGV[3])
if not deadline or tonumber(deadline) <= now then return 0 end
redis.call('ZADD', INF, now + tonumber(ARGV[5]), ARGV[3])
return 1
"""

# ARGV: now, gen, entry id, receive count, reason, '1' when the client saw the DLQ exist (else the
# message is deleted). Returns {held 1/0, outbox size}.
DEAD_LETTER = r"""
local c = load_config()
if not c then return redis.error_reply('NOQUEUE') end
if not held(c, ARGV[2], ARGV[3], ARGV[4]) then return {0, 0} end
local flat = entry(ARGV[3]) or {}
if c.dlq == '' or ARGV[6] ~= '1' then
  forget(c, ARGV[3], flat)
else
  to_outbox(c, ARGV[3], flat, c.dlq, ARGV[5])
end
return {1, redis.call('HLEN', OUTBOX)}
"""

# Redrive, on the dead-letter queue. ARGV: now, limit, target queue. Returns how many it parked.
REDRIVE_TAKE = r"""
local c = load_config()
if not c then return redis.error_reply('NOQUEUE') end
housekeeping(c)
return select_visible(c, tonumber(ARGV[2]), function(id, flat, prior)
  to_outbox(c, id, flat, ARGV[3], nil)
  return true
end, false)
"""

# The outbox of this queue: {entry id, JSON [target, fields], ...}.
OUTBOX_TAKE = r"""
return redis.call('HGETALL', OUTBOX)
"""

# ARGV: now, entry ids whose transfer completed.
OUTBOX_DONE = r"""
for k = 2, #ARGV do redis.call('HDEL', OUTBOX, ARGV[k]) end
return #ARGV - 1
"""

# On the receiving queue. ARGV: now, then pairs: transfer key, JSON [target, fields].
TRANSFER_IN = r"""
local c = load_config()
if not c then return redis.error_reply('NOQUEUE') end
local stored = 0
for k = 2, #ARGV, 2 do
  if redis.call('SET', P .. 't:' .. ARGV[k], '1', 'NX', 'EX', 3600) then
    local flat = cjson.decode(ARGV[k + 1])[2]
    if c.fifo then flat = with_field(flat, 'n', tostring(redis.call('INCR', P .. 'n'))) end
    append(c, flat)
    stored = stored + 1
  end
end
return stored
"""

# ARGV: now, ver, gen, then configuration field/value pairs.
CREATE = r"""
local created = redis.call('EXISTS', P .. 'c') == 0
redis.call('HSET', P .. 'c', 'ver', ARGV[2], unpack(ARGV, 4))
if created then
  redis.call('HSET', P .. 'c', 'gen', ARGV[3])
  if redis.call('EXISTS', S) == 0 then
    redis.call('XGROUP', 'CREATE', S, G, '$', 'MKSTREAM')
  end
end
return created and 1 or 0
"""

_DROP_MESSAGES = r"""
local groups = redis.call('ZRANGE', READY, 0, -1)
for _, g in ipairs(redis.call('HKEYS', GL)) do groups[#groups + 1] = g end
for _, g in ipairs(groups) do redis.call('DEL', P .. 'q:' .. g) end
redis.call('DEL', S, INF, FIRST, DL, DM, GL, READY)
"""

# ARGV: now, new gen (so receipts from before the purge are stale). Returns how many it removed.
PURGE = (
    r"""
local c = load_config()
if not c then return redis.error_reply('NOQUEUE') end
local removed = redis.call('XLEN', S) + redis.call('ZCARD', DL)
"""
    + _DROP_MESSAGES
    + r"""
redis.call('XGROUP', 'CREATE', S, G, '$', 'MKSTREAM')
redis.call('HSET', P .. 'c', 'gen', ARGV[2])
return removed
"""
)

DELETE_QUEUE = (
    r"""
if redis.call('EXISTS', P .. 'c') == 0 then return 0 end
"""
    + _DROP_MESSAGES
    + r"""
redis.call('DEL', P .. 'c', P .. 'n', P .. 'x', P .. 'xm', OUTBOX)
return 1
"""
)

# Returns {visible, in flight, delayed, sent ms of the oldest message or ''}.
STATS = r"""
local c = load_config()
if not c then return redis.error_reply('NOQUEUE') end
housekeeping(c)
local stored, held_all = redis.call('XLEN', S), redis.call('ZCARD', INF)
local expired = redis.call('ZCOUNT', INF, '-inf', now)
local oldest = nil
local head = redis.call('XRANGE', S, '-', '+', 'COUNT', 1)
if #head > 0 then oldest = tonumber(field(head[1][2], 't')) end
local first_delayed = redis.call('ZRANGE', DL, 0, 0)
if #first_delayed > 0 then
  local packed = redis.call('HGET', DM, first_delayed[1])
  if packed then
    local t = tonumber(field(cjson.decode(packed), 't'))
    if not oldest or t < oldest then oldest = t end
  end
end
return {stored - held_all + expired, held_all - expired, redis.call('ZCARD', DL),
  oldest and tostring(oldest) or ''}
"""

SCRIPTS: dict[str, str] = {
    name: PRELUDE + body
    for name, body in {
        "send": SEND,
        "receive": RECEIVE,
        "delete": DELETE,
        "change_visibility": CHANGE_VISIBILITY,
        "dead_letter": DEAD_LETTER,
        "redrive_take": REDRIVE_TAKE,
        "outbox_take": OUTBOX_TAKE,
        "outbox_done": OUTBOX_DONE,
        "transfer_in": TRANSFER_IN,
        "create": CREATE,
        "purge": PURGE,
        "delete_queue": DELETE_QUEUE,
        "stats": STATS,
    }.items()
}
