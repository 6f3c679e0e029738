-- Hydrate: admission of a batch of events into an underlying's market state, atomically.
-- The body of a step function (K, first, last) of the commit script (topology/commit.lua): it runs
-- after the lease check and before the XACK of the batch, in the same script.
--
-- K[1] epoch pointer   K[2] changes stream   K[3] fills ledger (zset)   K[4] spot   K[5] epochs index
-- K[6] volatility index (VIX)
-- K[5 + 2j] and K[6 + 2j]: the meta hash and the state hash of the j-th declared epoch (j = 1..n)
-- ARGV[first] the active epoch the step assumed ('' for none)   then retire TTL (s), fill window (ms),
-- shrink ratio, confirmation time (ns), n, the n declared epoch ids (the assumed active one and every epoch of the batch's snapshots),
-- then records, each starting with an opcode:
--   G src rx_ns                       start the output group of one input entry
--   C epoch geometry ts_ns n [sym meta]*n epoch_change_json
--                                     a chain snapshot's geometry: create the epoch as warming (or reuse
--                                     it), carry the newer slot values over from the active epoch; the
--                                     epoch is announced on the changes stream either way. A geometry
--                                     under shrink ratio × the active one's contracts is held (its
--                                     values go to the active epoch, nothing is announced) until it
--                                     has come in every snapshot for the confirmation time: one
--                                     truncated poll must not replace the grid
--   W epoch ts_ns                     promote: one pointer switch; the old epoch is retired with a TTL
--   S sym slot newness change_json    admission of one slot value: A new, B strictly newer, C discarded
--   F sym fill_id size score_ms change_json
--                                     count a fill's size into the volume once; a counted fill goes
--                                     on the changes stream (the trade flow reads it)
--   P newness change_json             admission of the spot value
--   V newness change_json             admission of the volatility index (VIX) value, as spot's
-- Newness is a fixed-width string "<ts_ns:20><seq:12>", so string order is (event time, sequence) order
-- and nanosecond times never pass through Lua's doubles.
-- If the active epoch is not the one assumed (another replica promoted one), it returns MSCONFLICT
-- before writing anything. Returns {A, B, C, X (outside the epoch), promotions, fills counted, fills
-- seen before, stale fills, the active epoch after the batch, snapshots held, changes entries
-- appended}: agents/hydrate/hydrator.py reads it as an Admission.

local assumed = ARGV[first]
local retire_ttl = tonumber(ARGV[first + 1])
local fill_window = tonumber(ARGV[first + 2])
local shrink_ratio = tonumber(ARGV[first + 3])
local confirm_ns = tonumber(ARGV[first + 4])
local active = redis.call('GET', K[1])
if (active or '') ~= assumed then
  return {err = 'MSCONFLICT hydrate: the active epoch is ' .. tostring(active) .. ', the step assumed ' .. assumed}
end
local metas, states = {}, {}
local nepochs = tonumber(ARGV[first + 5])
for j = 1, nepochs do
  local e = ARGV[first + 5 + j]
  metas[e], states[e] = K[5 + 2 * j], K[6 + 2 * j]
end
local function meta_of(e)
  return metas[e] or error('hydrate: epoch ' .. e .. ' was not declared')
end
local function state_of(e)
  return states[e] or error('hydrate: epoch ' .. e .. ' was not declared')
end
local target = active
local counts = {0, 0, 0, 0, 0, 0, 0, 0}
local held_snapshots = 0
local held = {}

-- Whether a snapshot of this geometry must wait for confirmation: a far smaller grid than the active
-- one that has not yet come in every snapshot for confirm_ns of event time (so a burst of copies
-- confirms nothing); records the sighting on the active epoch.
local function hold(epoch, count, ts)
  if not active then
    return false
  end
  local meta = meta_of(active)
  if epoch == active then
    redis.call('HDEL', meta, 'candidate', 'candidate_since')
    return false
  end
  local have = tonumber(redis.call('HGET', meta, 'contracts') or '0') or 0
  if count >= have * shrink_ratio then
    return false
  end
  local since = tonumber(ts)
  if redis.call('HGET', meta, 'candidate') == epoch then
    since = tonumber(redis.call('HGET', meta, 'candidate_since')) or since
  end
  if tonumber(ts) - since >= confirm_ns then
    return false
  end
  redis.call('HSET', meta, 'candidate', epoch, 'candidate_since', since)
  return true
end

local fill_floor = nil
local top = redis.call('ZRANGE', K[3], -1, -1, 'WITHSCORES')
if top[2] then
  fill_floor = tonumber(top[2]) - fill_window
end

local group_src, group_rx = nil, nil
local out = {}
local appended = 0

local function flush()
  if group_src ~= nil and #out > 0 then
    redis.call('XADD', K[2], '*',
      'kind', 'changes', 'v', '1', 'src', group_src, 'rx_ns', group_rx,
      'epoch', target or '', 'data', '[' .. table.concat(out, ',') .. ']')
    appended = appended + 1
  end
  out = {}
end

local i = first + 6 + nepochs
while i <= last do
  local op = ARGV[i]
  if op == 'G' then
    flush()
    group_src, group_rx = ARGV[i + 1], ARGV[i + 2]
    i = i + 3
  elseif op == 'C' then
    local epoch, geometry, ts, count = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
    local at = i + 5
    local change_json = ARGV[at + 2 * count]
    held[epoch] = hold(epoch, count, ts)
    if held[epoch] then
      held_snapshots = held_snapshots + 1
    elseif epoch ~= active then
      local meta = meta_of(epoch)
      local state = state_of(epoch)
      redis.call('PERSIST', meta)
      redis.call('PERSIST', state)
      redis.call('HSET', meta, 'geometry', geometry, 'status', 'warming', 'created_ns', ts, 'contracts', count)
      redis.call('ZADD', K[5], ts, epoch)
      local old = active and state_of(active) or nil
      for j = 0, count - 1 do
        local sym = ARGV[at + 2 * j]
        redis.call('HSET', state, sym, ARGV[at + 2 * j + 1])
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
    if not held[epoch] then
      table.insert(out, change_json)
    end
    i = at + 2 * count + 1
  elseif op == 'W' then
    local epoch, ts = ARGV[i + 1], ARGV[i + 2]
    if epoch ~= active and not held[epoch] then
      redis.call('SET', K[1], epoch)
      redis.call('HSET', meta_of(epoch), 'status', 'active', 'promoted_ns', ts)
      if active then
        redis.call('HSET', meta_of(active), 'status', 'retired', 'retired_ns', ts)
        redis.call('EXPIRE', meta_of(active), retire_ttl)
        redis.call('EXPIRE', state_of(active), retire_ttl)
      end
      active = epoch
      counts[5] = counts[5] + 1
    end
    i = i + 3
  elseif op == 'S' then
    local sym, slot, newness, change_json = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local state = target and state_of(target) or nil
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
    local state = target and state_of(target) or nil
    if state ~= nil and redis.call('HEXISTS', state, sym) == 1 then
      if fill_floor ~= nil and score < fill_floor then
        counts[8] = counts[8] + 1
      elseif redis.call('ZADD', K[3], 'NX', score, fill_id) == 1 then
        redis.call('HINCRBY', state, sym .. '|v', size)
        counts[6] = counts[6] + 1
        table.insert(out, ARGV[i + 5])
        if fill_floor == nil or score - fill_window > fill_floor then
          fill_floor = score - fill_window
        end
      else
        counts[7] = counts[7] + 1
      end
    end
    i = i + 6
  elseif op == 'P' or op == 'V' then
    local newness, change_json = ARGV[i + 1], ARGV[i + 2]
    local key = (op == 'P') and K[4] or K[6]
    local cur = redis.call('GET', key)
    if (not cur) or newness > string.sub(cur, 1, 32) then
      redis.call('SET', key, newness .. change_json)
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
  redis.call('ZREMRANGEBYSCORE', K[3], '-inf', '(' .. fill_floor)
end
counts[9] = active or ''
counts[10] = held_snapshots
counts[11] = appended
return counts
