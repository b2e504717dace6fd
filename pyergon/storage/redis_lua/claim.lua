-- claim: take up to ``limit`` runnable flows of some types, in queue order, with their records.
-- Arguments: now, due_by, limit, flow types (counted), one fresh lease token per flow it may
-- take (counted), the claim's other field/value pairs to set (counted), fields to delete
-- (counted). Reply: {taken, damaged}. Per flow taken: {its id, its fields, its records'
-- positions and values (false if its records key is not a hash)}. Per damage met: {the flow's
-- id ('' for an index), the key, the field ('' for the key itself), what it holds}.
--
-- Runnable and queue order are pyergon.core.transitions.is_runnable and queue_order, read off
-- the indexes: PENDING flows, SUSPENDED flows whose wake time is due by ``due_by``, RUNNING
-- flows whose lease expired before ``now``; ordered by ready time (the wake time of a timer,
-- else 0), then created_at, then id. A RUNNING flow taken over counts the lease it lost.
--
-- A script stops at the first command that fails, keeping what it wrote before, so every key a
-- flow's claim touches is checked before anything of it is written. Damage never stops the
-- claim: an index of another type is skipped (the flows that need it are not taken), and a
-- flow the indexes cannot follow (its key is no hash, or a time they are scored by is no
-- number) leaves the queue index it was found in, so it no longer blocks the queue.
local now, due_by, limit = arg(), arg(), tonumber(arg())
local types, tokens, sets, dels = counted(), counted(), counted(), counted()

local damaged = {}
local function damage(id, key, field, found)
  damaged[#damaged + 1] = {id, key, field, found}
end

-- Whether ``key`` is absent or of ``kind``, and what it is; one TYPE call per key and script.
local kinds = {}
local function holds(key, kind)
  local found = kinds[key]
  if not found then
    found = redis.call('TYPE', key).ok
    kinds[key] = found
  end
  return found == 'none' or found == kind, found
end

-- ``command`` on the sorted set ``key``, or nothing (the damage noted) if it is something else.
local function read_index(key, command, ...)
  local usable, found = holds(key, 'zset')
  if not usable then
    damage('', key, '', found)
    return {}
  end
  return redis.call(command, key, ...)
end

local candidates = {}
local function consider(ready, created, id, source)
  candidates[#candidates + 1] = {tonumber(ready), tonumber(created) or 0, id, source}
end
local function before(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  if a[2] ~= b[2] then return a[2] < b[2] end
  return bytes_before(a[3], b[3])
end
local function created_at(id)
  if not holds(flow_key(id), 'hash') then return nil end
  return redis.call('HGET', flow_key(id), 'created_at')
end

for _, t in ipairs(types) do
  local ready = p .. ':status:PENDING:' .. t
  local pending = read_index(ready, 'ZRANGE', 0, limit - 1, 'WITHSCORES')
  for i = 1, #pending, 2 do consider(0, pending[i + 1], pending[i], ready) end
  local timers = p .. ':timers:' .. t
  local due = read_index(timers, 'ZRANGEBYSCORE', '-inf', due_by, 'WITHSCORES', 'LIMIT', 0, limit)
  local seen = {}
  for i = 1, #due, 2 do
    consider(due[i + 1], created_at(due[i]), due[i], timers)
    seen[due[i]] = true
  end
  if #due == 2 * limit then
    -- Flows due at the same time are ordered by age, not id: take every one at the last time.
    local last = due[#due]
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', timers, last, last)) do
      if not seen[id] then consider(last, created_at(id), id, timers) end
    end
  end
  -- Expired leases are few (the flows of dead workers); each is ordered by created_at.
  local leases = p .. ':leases:' .. t
  for _, id in ipairs(read_index(leases, 'ZRANGEBYSCORE', '-inf', '(' .. now)) do
    consider(0, created_at(id), id, leases)
  end
end
table.sort(candidates, before)

-- The fields of a state (see read_state) that a claim's writes replace.
local written = {}
for i = 1, #sets, 2 do written[sets[i]] = sets[i + 1] end
for _, field in ipairs(dels) do written[field] = false end
local function claimed_state(old)
  local new = {}
  for field, value in pairs(old) do new[field] = value end
  for field, value in pairs(written) do
    if field ~= 'version' then new[field] = value or nil end
  end
  return new
end

-- The first time of ``s`` that an index is scored by and that is not a number.
local function unscored(s)
  local function bad(value) local n = tonumber(value) return n == nil or n ~= n end
  if bad(s.created_at) then return 'created_at' end
  if s.status == 'SUSPENDED' and s.wake_at and bad(s.wake_at) then return 'wake_at' end
  if s.status == 'RUNNING' and s.lease_expires_at and bad(s.lease_expires_at) then
    return 'lease_expires_at'
  end
  return nil
end

-- The first index of ``s`` that holds something other than a sorted set.
local function blocked_index(s)
  for key in pairs(index_entries(s)) do
    if not holds(key, 'zset') then return key end
  end
  return nil
end

local taken = {}
for _, candidate in ipairs(candidates) do
  if #taken == limit then break end
  local id, source = candidate[3], candidate[4]
  local key = flow_key(id)
  local is_hash, found = holds(key, 'hash')
  local old, field
  if is_hash then
    old = read_state(id)
    field = old and unscored(old) or (found == 'hash' and not old and 'status') or nil
  end
  if not old or field then
    -- Not a flow the indexes can follow: out of the queue, so it blocks no other flow.
    redis.call('ZREM', source, id)
    if field then
      damage(id, key, field, old and old[field] or false)
    else
      damage(id, key, '', found)
    end
  else
    local new = claimed_state(old)
    local blocked = blocked_index(old) or blocked_index(new)
    if blocked then
      damage(id, blocked, '', kinds[blocked])
    else
      local records = p .. ':inv:' .. id
      if old.status == TAKEN_OVER then
        -- Its lease expired: the claim counts the lease its owner lost, as
        -- pyergon.core.transitions.takeover_changes says. A count that is no integer is left
        -- as it is, for the claimer to fail the flow naming the field.
        local held = redis.call('HMGET', key, 'lease_owner', 'lease_losses')
        local losses = held[2] or '0'
        if string.match(losses, '^%d+$') and #losses < 15 then
          redis.call('HSET', key, 'lease_losses', tonumber(losses) + 1)
        end
        if held[1] then
          redis.call('HSET', key, 'last_lost_by', held[1])
        else
          redis.call('HDEL', key, 'last_lost_by')
        end
      end
      if #dels > 0 then redis.call('HDEL', key, unpack(dels)) end
      redis.call('HSET', key, 'version', old.version + 1, 'lease_token', tokens[#taken + 1],
        unpack(sets))
      reindex(id, old, read_state(id))
      taken[#taken + 1] = {id, redis.call('HGETALL', key),
        holds(records, 'hash') and redis.call('HGETALL', records) or false}
    end
  end
end
return {taken, damaged}
