#!lua
-- The commit of one batch: one script, one round trip, on keys of one slot (topology/commit.py).
--
-- The shebang makes the server refuse the whole script before it runs when it is out of memory, and
-- (in a cluster) refuse any key outside the declared keys' slot. Every key is declared in KEYS:
--   KEYS[1] the input stream   KEYS[2] its errors hash   KEYS[3] the lease (KEYS[1] again when unfenced)
--   KEYS[4..] the keys the effects touch
-- ARGV[1] group   ARGV[2] lease token ('' when unfenced)   ARGV[3] '1' to clear the acked ids' errors
-- ARGV[4] n acks, ARGV[5 .. 4+n] the entry ids to acknowledge, then the effects, each an opcode:
--   K name key nargs arg*       one command on one declared key (key: an index into KEYS)
--   X key id nfields field*     XADD; an explicit id already in the stream counts as done, so a
--                               retried commit appends it once
--   S name nkeys key* nargs     a step function of the agent, spliced in below: steps[name](K, first,
--                               last) with K its declared keys and ARGV[first..last] its arguments;
--                               it may return {err = 'MSCONFLICT ...'} before writing anything
-- Order: the lease check, the effects in order, then XACK. Any error stops the script before the
-- XACK, so a batch whose effects failed stays pending (redelivered, then dead-lettered by the
-- runtime). Returns the step functions' results, in order.

local steps = {}
-- @@STEPS@@

local UNPACK_MAX = 4000

local token = ARGV[2]
if token ~= '' and redis.call('GET', KEYS[3]) ~= token then
  return redis.error_reply('MSLEASE ' .. KEYS[3] .. ' is held by another consumer')
end

local nack = tonumber(ARGV[4])
local results = {}
local i = 5 + nack
local n = #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'K' then
    local name, key, nargs = ARGV[i + 1], KEYS[tonumber(ARGV[i + 2])], tonumber(ARGV[i + 3])
    redis.call(name, key, unpack(ARGV, i + 4, i + 3 + nargs))
    i = i + 4 + nargs
  elseif op == 'X' then
    local key, id, nf = KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], tonumber(ARGV[i + 3])
    if id == '*' then
      redis.call('XADD', key, '*', unpack(ARGV, i + 4, i + 3 + nf))
    else
      local r = redis.pcall('XADD', key, id, unpack(ARGV, i + 4, i + 3 + nf))
      if type(r) == 'table' and r.err and #redis.call('XRANGE', key, id, id) == 0 then
        return r
      end
    end
    i = i + 4 + nf
  elseif op == 'S' then
    local name, nk = ARGV[i + 1], tonumber(ARGV[i + 2])
    local K = {}
    for j = 1, nk do
      K[j] = KEYS[tonumber(ARGV[i + 2 + j])]
    end
    local nargs = tonumber(ARGV[i + 3 + nk])
    local first = i + 4 + nk
    local step = steps[name]
    if step == nil then
      return redis.error_reply('MSCOMMIT unknown step ' .. tostring(name))
    end
    local r = step(K, first, first + nargs - 1)
    if type(r) == 'table' and r.err then
      return r
    end
    results[#results + 1] = r
    i = first + nargs
  else
    return redis.error_reply('MSCOMMIT unknown opcode ' .. tostring(op))
  end
end

for a = 5, 4 + nack, UNPACK_MAX do
  local b = math.min(a + UNPACK_MAX - 1, 4 + nack)
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, a, b))
  if ARGV[3] == '1' then
    redis.call('HDEL', KEYS[2], unpack(ARGV, a, b))
  end
end
return results
