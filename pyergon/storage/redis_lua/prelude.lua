-- Shared by every script, which it precedes: the arguments every script takes, readers for the
-- rest, the keys of a flow and the indexes it belongs to. The scripts hold no rule of a flow's
-- life: they check guards, write what they are given and keep the indexes in step with it.
--
-- ARGV[1] is the prefix (every key is built from it, so KEYS is unused) and ARGV[2] the
-- caller's origin id, published as the wake-up message so a process can skip its own.
-- Times stay the strings Python wrote (repr of a float), so no precision is lost in Lua.

local p = '{' .. ARGV[1] .. '}'
local origin = ARGV[2]
local cursor = 3

local function arg()
  local value = ARGV[cursor]
  cursor = cursor + 1
  return value
end

-- A list argument: its length, then its values.
local function counted()
  local list = {}
  for i = 1, tonumber(arg()) do list[i] = arg() end
  return list
end

-- An optional argument: a counted list of zero or one value.
local function optional()
  return counted()[1]
end

-- Byte order, the order of Redis' equal-score ties (Lua's ``<`` on strings follows the locale).
local function bytes_before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function flow_key(id) return p .. ':flow:' .. id end
local function worker_key(id) return p .. ':workers:' .. id end

-- What the indexes depend on, and the version; nil if the flow does not exist.
local function read_state(id)
  local v = redis.call('HMGET', flow_key(id), 'status', 'flow_type', 'created_at', 'wake_at',
    'lease_expires_at', 'worker_id', 'parent_flow_id', 'version')
  if not v[1] then return nil end
  return {status = v[1], flow_type = v[2], created_at = v[3],
          wake_at = v[4] or nil, lease_expires_at = v[5] or nil,
          worker_id = v[6] or nil, parent_flow_id = v[7] or nil,
          -- A flow written before layout version 3 has no version field: it is at version 1.
          version = tonumber(v[8]) or 1}
end

-- The sorted sets a flow in state ``s`` belongs to, with its score in each.
local function index_entries(s)
  local t, c = s.flow_type, s.created_at
  local entries = {
    [p .. ':flows'] = c,
    [p .. ':type:' .. t] = c,
    [p .. ':status:' .. s.status] = c,
    [p .. ':status:' .. s.status .. ':' .. t] = c,
  }
  if s.worker_id then entries[p .. ':worker:' .. s.worker_id] = c end
  if s.parent_flow_id then entries[p .. ':children:' .. s.parent_flow_id] = c end
  if s.status == 'SUSPENDED' and s.wake_at then
    entries[p .. ':timers'] = s.wake_at
    entries[p .. ':timers:' .. t] = s.wake_at
  elseif s.status == 'RUNNING' and s.lease_expires_at then
    entries[p .. ':leases:' .. t] = s.lease_expires_at
  end
  return entries
end

-- Move flow ``id`` from the indexes of state ``old`` to those of ``new`` (either may be nil).
local function reindex(id, old, new)
  local before = old and index_entries(old) or {}
  local after = new and index_entries(new) or {}
  for key in pairs(before) do
    if after[key] == nil then redis.call('ZREM', key, id) end
  end
  for key, score in pairs(after) do
    if before[key] ~= score then redis.call('ZADD', key, score, id) end
  end
end

local function publish_work()
  redis.call('PUBLISH', p .. ':work', origin)
end

-- The JSON header of an encoded record: its first line.
local function record_header(value)
  return cjson.decode(string.sub(value, 1, string.find(value, '\n', 1, true) - 1))
end

local function delete_everything_of(id)
  local s = read_state(id)
  if s then reindex(id, s, nil) end
  redis.call('UNLINK', flow_key(id), p .. ':inv:' .. id, p .. ':sig:' .. id)
  redis.call('SREM', p .. ':ids', id)
  return s ~= nil
end

-- Extend to ``expires`` the leases of the flow id, lease token pairs from the next argument to
-- the last that are still held with their token. Returns the ids renewed. A renewal is no
-- change of the flow: its version stays.
local function renew_held_leases(expires)
  local renewed = {}
  for i = cursor, #ARGV, 2 do
    local id, token = ARGV[i], ARGV[i + 1]
    local old = read_state(id)
    if old and old.status == 'RUNNING' and redis.call('HGET', flow_key(id), 'lease_token') == token then
      redis.call('HSET', flow_key(id), 'lease_expires_at', expires)
      reindex(id, old, read_state(id))
      renewed[#renewed + 1] = id
    end
  end
  return renewed
end
