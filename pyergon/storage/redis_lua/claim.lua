-- claim: take up to ``limit`` runnable flows of some types, in queue order, with their records.
-- Arguments: now, due_by, limit, flow types (counted), one fresh lease token per flow it may
-- take (counted), the claim's other field/value pairs to set (counted), fields to delete
-- (counted). Reply: per flow taken, {its fields, its records' positions and values}.
--
-- Runnable and queue order are pyergon.core.transitions.is_runnable and queue_order, read off
-- the indexes: PENDING flows, SUSPENDED flows whose wake time is due by ``due_by``, RUNNING
-- flows whose lease expired before ``now``; ordered by ready time (the wake time of a timer,
-- else 0), then created_at, then id.
local now, due_by, limit = arg(), arg(), tonumber(arg())
local types, tokens, sets, dels = counted(), counted(), counted(), counted()

local candidates = {}
local function consider(ready, created, id)
  candidates[#candidates + 1] = {tonumber(ready), tonumber(created), id}
end
local function before(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  if a[2] ~= b[2] then return a[2] < b[2] end
  return bytes_before(a[3], b[3])
end
local function created_at(id) return redis.call('HGET', flow_key(id), 'created_at') end

for _, t in ipairs(types) do
  local pending = redis.call('ZRANGE', p .. ':status:PENDING:' .. t, 0, limit - 1, 'WITHSCORES')
  for i = 1, #pending, 2 do consider(0, pending[i + 1], pending[i]) end
  local timers = p .. ':timers:' .. t
  local due = redis.call('ZRANGEBYSCORE', timers, '-inf', due_by, 'WITHSCORES', 'LIMIT', 0, limit)
  local seen = {}
  for i = 1, #due, 2 do
    consider(due[i + 1], created_at(due[i]), due[i])
    seen[due[i]] = true
  end
  if #due == 2 * limit then
    -- Flows due at the same time are ordered by age, not id: take every one at the last time.
    local last = due[#due]
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', timers, last, last)) do
      if not seen[id] then consider(last, created_at(id), id) end
    end
  end
  -- Expired leases are few (the flows of dead workers); each is ordered by created_at.
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. ':leases:' .. t, '-inf', '(' .. now)) do
    consider(0, created_at(id), id)
  end
end
table.sort(candidates, before)

local claimed = {}
for i = 1, math.min(limit, #candidates) do
  local id = candidates[i][3]
  local key = flow_key(id)
  local old = read_state(id)
  if #dels > 0 then redis.call('HDEL', key, unpack(dels)) end
  redis.call('HSET', key, 'version', old.version + 1, 'lease_token', tokens[i], unpack(sets))
  reindex(id, old, read_state(id))
  claimed[i] = {redis.call('HGETALL', key), redis.call('HGETALL', p .. ':inv:' .. id)}
end
return claimed
