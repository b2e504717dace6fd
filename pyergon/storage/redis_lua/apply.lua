-- apply: one Change, all or nothing, in the order pyergon.core.changes.Change gives.
-- Arguments, each list preceded by its length:
--   guards         flow id, expected version (0: the flow must not exist), ...
--   held           empty, or the flow id and lease token the change is sent under
--   forget_failed  flow ids whose FAILED records are deleted
--   forget         how many; each: flow id, top-level positions whose records are deleted
--                  (counted)
--   records        flow id, position, encoded record, ...
--   signals        flow id, name, encoded signal, ...
--   writes         how many; each: flow id, '1' if only some statuses allow its fields then
--                  those statuses (counted), field/value pairs to set (counted), fields to
--                  delete (counted)
--   notify         '1' to publish a wake-up once everything is written
-- Reply: {the flow whose version moved, or false; 1 on a record conflict, else 0;
--         per record handled, false if stored as given, else the final record that stands;
--         how many signals were new}.

-- Whether two encoded final records hold the same outcome (pyergon.core.changes.stored_as_given):
-- the same status, fire time and error text, and the same result and error payload bytes. The
-- output that follows them, the progress and the code_hash are no part of it: two runs of a
-- step may print differently, or run other code, and still agree.
local function same_outcome(stored, given)
  if stored == given then return true end
  local a, b = record_header(stored), record_header(given)
  if a.status ~= b.status or a.fire_at ~= b.fire_at or a.result ~= b.result
      or a.error_payload ~= b.error_payload or (a.error == cjson.null) ~= (b.error == cjson.null) then
    return false
  end
  if a.error ~= cjson.null then
    for i = 1, 3 do
      if a.error[i] ~= b.error[i] then return false end
    end
  end
  -- The headers agree on the lengths of the result and the error payload, which come first.
  local length = 0
  for _, n in ipairs({a.result, a.error_payload}) do
    if n ~= cjson.null then length = length + n end
  end
  local function outcome(value)
    local start = string.find(value, '\n', 1, true) + 1
    return string.sub(value, start, start + length - 1)
  end
  return outcome(stored) == outcome(given)
end

-- 1. Guards: one flow at another version, or a held flow that no longer runs under the lease
-- token, refuses the whole change.
local guards = counted()
for i = 1, #guards, 2 do
  local s = read_state(guards[i])
  if (s and s.version or 0) ~= tonumber(guards[i + 1]) then return {guards[i], 0, {}, 0} end
end
local held = counted()
if #held > 0 then
  local lease = redis.call('HMGET', flow_key(held[1]), 'status', 'lease_token')
  if lease[1] ~= 'RUNNING' or lease[2] ~= held[2] then return {held[1], 0, {}, 0} end
end

-- 2. Failed records are forgotten, so a retry runs their operations again.
for _, id in ipairs(counted()) do
  local key = p .. ':inv:' .. id
  local fields = redis.call('HGETALL', key)
  local failed = {}
  for i = 1, #fields, 2 do
    if record_header(fields[i + 1]).status == FAILED then failed[#failed + 1] = fields[i] end
  end
  if #failed > 0 then redis.call('HDEL', key, unpack(failed)) end
end
-- And so are the records at chosen positions (a record's field is '<sequence>:<sub_sequence>'),
-- so a rerun runs them again. One HDEL each: unpack fails on a few thousand values.
for _ = 1, tonumber(arg()) do
  local key, chosen = p .. ':inv:' .. arg(), {}
  for _, sequence in ipairs(counted()) do chosen[sequence] = true end
  if next(chosen) then
    for _, position in ipairs(redis.call('HKEYS', key)) do
      if chosen[string.match(position, '^[^:]*')] then redis.call('HDEL', key, position) end
    end
  end
end

-- 3. Records, first writer wins: a final record stands; one with another outcome stops here.
local records, stood = counted(), {}
for i = 1, #records, 3 do
  local id, position, value = records[i], records[i + 1], records[i + 2]
  local key = p .. ':inv:' .. id
  local existing = redis.call('HGET', key, position)
  if existing and FINAL_RECORD[record_header(existing).status] then
    stood[#stood + 1] = existing
    if not same_outcome(existing, value) then return {false, 1, stood, 0} end
  else
    redis.call('HSET', key, position, value)
    redis.call('SADD', p .. ':ids', id)
    stood[#stood + 1] = false
  end
end

-- 4. Signals, each unless its flow has one of that name.
local signals, new_signals = counted(), 0
for i = 1, #signals, 3 do
  if redis.call('HSETNX', p .. ':sig:' .. signals[i], signals[i + 1], signals[i + 2]) == 1 then
    redis.call('SADD', p .. ':ids', signals[i])
    new_signals = new_signals + 1
  end
end

-- 5. Writes: the version always moves on; the fields only where the status allows them.
for _ = 1, tonumber(arg()) do
  local id, by_status = arg(), arg() == '1'
  local statuses, sets, dels = counted(), counted(), counted()
  local old = read_state(id)
  if old then
    local allowed = not by_status
    for _, status in ipairs(statuses) do
      if old.status == status then allowed = true end
    end
    local key = flow_key(id)
    if allowed then
      if #dels > 0 then redis.call('HDEL', key, unpack(dels)) end
      redis.call('HSET', key, 'version', old.version + 1, unpack(sets))
      reindex(id, old, read_state(id))
    else
      redis.call('HSET', key, 'version', old.version + 1)
    end
  end
end

-- 6. Wake-ups.
if arg() == '1' then publish_work() end
return {false, 0, stood, new_signals}
