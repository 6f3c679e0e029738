-- Hydrate: admission of a batch of events into an underlying's market state, atomically.
--
-- KEYS[1] epoch pointer   KEYS[2] changes stream   KEYS[3] fills ledger (zset)   KEYS[4] spot
-- ARGV[1] key prefix "ms:{U}:"   ARGV[2] retire TTL (s)   ARGV[3] fill window (ms)
-- (the changes stream is trimmed after the commit, to its byte and age bounds: topology/retention.py)
-- then records, each starting with an opcode:
--   G src rx_ns                       start the output group of one input entry
--   C epoch geometry ts_ns n [sym meta]*n epoch_change_json
--                                     a chain snapshot's geometry: create the epoch as warming (or reuse
--                                     it), carry the newer slot values over from the active epoch; the
--                                     epoch is announced on the changes stream either way
--   W epoch ts_ns                     promote: one pointer switch; the old epoch is retired with a TTL
--   S sym slot newness change_json    admission of one slot value: A new, B strictly newer, C discarded
--   F sym fill_id size score_ms       count a fill's size into the volume once
--   P newness change_json             admission of the spot value
-- Newness is a fixed-width string "<ts_ns:20><seq:12>", so string order is (event time, sequence) order
-- and nanosecond times never pass through Lua's doubles.
-- Returns {A, B, C, X (outside the epoch), promotions, fills counted, fills seen before, stale fills}.

local prefix = ARGV[1]
local retire_ttl = tonumber(ARGV[2])
local fill_window = tonumber(ARGV[3])
local active = redis.call('GET', KEYS[1])
local target = active
local counts = {0, 0, 0, 0, 0, 0, 0, 0}

local fill_floor = nil
local top = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
if top[2] then
  fill_floor = tonumber(top[2]) - fill_window
end

local group_src, group_rx = nil, nil
local out = {}

local function flush()
  if group_src ~= nil and #out > 0 then
    redis.call('XADD', KEYS[2], '*',
      'kind', 'changes', 'v', '1', 'src', group_src, 'rx_ns', group_rx,
      'epoch', target or '', 'data', '[' .. table.concat(out, ',') .. ']')
  end
  out = {}
end

local i = 4
local n = #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'G' then
    flush()
    group_src, group_rx = ARGV[i + 1], ARGV[i + 2]
    i = i + 3
  elseif op == 'C' then
    local epoch, geometry, ts, count = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
    local first = i + 5
    local change_json = ARGV[first + 2 * count]
    if epoch ~= active then
      local meta = prefix .. 'epoch:' .. epoch
      local state = prefix .. 'state:' .. epoch
      redis.call('PERSIST', meta)
      redis.call('PERSIST', state)
      redis.call('HSET', meta, 'geometry', geometry, 'status', 'warming', 'created_ns', ts, 'contracts', count)
      redis.call('ZADD', prefix .. 'epochs', ts, epoch)
      local old = active and (prefix .. 'state:' .. active) or nil
      for j = 0, count - 1 do
        local sym = ARGV[first + 2 * j]
        redis.call('HSET', state, sym, ARGV[first + 2 * j + 1])
        if old then
          for _, slot in ipairs({'q', 't', 'g'}) do
            local v = redis.call('HGET', old, sym .. '|' .. slot)
            if v then
              local mine = redis.call('HGET', state, sym .. '|' .. slot)
              if (not mine) or string.sub(v, 1, 32) > string.sub(mine, 1, 32) then
                redis.call('HSET', state, sym .. '|' .. slot, v)
              end
            end
          end
          local vol = redis.call('HGET', old, sym .. '|v')
          if vol then redis.call('HSET', state, sym .. '|v', vol) end
        end
      end
      target = epoch
    end
    -- Announced with every snapshot, new or not: a calc agent that starts late (or after its input
    -- was trimmed) learns the grid at the next snapshot.
    table.insert(out, change_json)
    i = first + 2 * count + 1
  elseif op == 'W' then
    local epoch, ts = ARGV[i + 1], ARGV[i + 2]
    if epoch ~= active then
      redis.call('SET', KEYS[1], epoch)
      redis.call('HSET', prefix .. 'epoch:' .. epoch, 'status', 'active', 'promoted_ns', ts)
      if active then
        redis.call('HSET', prefix .. 'epoch:' .. active, 'status', 'retired', 'retired_ns', ts)
        redis.call('EXPIRE', prefix .. 'epoch:' .. active, retire_ttl)
        redis.call('EXPIRE', prefix .. 'state:' .. active, retire_ttl)
      end
      active = epoch
      counts[5] = counts[5] + 1
    end
    i = i + 3
  elseif op == 'S' then
    local sym, slot, newness, change_json = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local state = target and (prefix .. 'state:' .. target) or nil
    if state == nil or redis.call('HEXISTS', state, sym) == 0 then
      counts[4] = counts[4] + 1
    else
      local field = sym .. '|' .. slot
      local cur = redis.call('HGET', state, field)
      if not cur then
        redis.call('HSET', state, field, newness .. change_json)
        counts[1] = counts[1] + 1
        table.insert(out, change_json)
      elseif newness > string.sub(cur, 1, 32) then
        redis.call('HSET', state, field, newness .. change_json)
        counts[2] = counts[2] + 1
        table.insert(out, change_json)
      else
        counts[3] = counts[3] + 1
      end
    end
    i = i + 5
  elseif op == 'F' then
    local sym, fill_id, size, score = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
    local state = target and (prefix .. 'state:' .. target) or nil
    if state ~= nil and redis.call('HEXISTS', state, sym) == 1 then
      if fill_floor ~= nil and score < fill_floor then
        counts[8] = counts[8] + 1
      elseif redis.call('ZADD', KEYS[3], 'NX', score, fill_id) == 1 then
        redis.call('HINCRBY', state, sym .. '|v', size)
        counts[6] = counts[6] + 1
        if fill_floor == nil or score - fill_window > fill_floor then
          fill_floor = score - fill_window
        end
      else
        counts[7] = counts[7] + 1
      end
    end
    i = i + 5
  elseif op == 'P' then
    local newness, change_json = ARGV[i + 1], ARGV[i + 2]
    local cur = redis.call('GET', KEYS[4])
    if (not cur) or newness > string.sub(cur, 1, 32) then
      redis.call('SET', KEYS[4], newness .. change_json)
      counts[cur and 2 or 1] = counts[cur and 2 or 1] + 1
      table.insert(out, change_json)
    else
      counts[3] = counts[3] + 1
    end
    i = i + 3
  else
    return redis.error_reply('hydrate: unknown opcode ' .. tostring(op))
  end
end
flush()
if fill_floor ~= nil then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. fill_floor)
end
return counts
