-- artifact_references: a counted list of flow ids. Reply: the payloads of those flows that are
-- artifact references ('A1...'): the flow's inputs and result, its records' results and its
-- signals' payloads. The caller hands a batch of ids at a time (SSCAN of the ids set), so the
-- script never holds the server for long; Python parses the references.
local found = {}
local function keep(value)
  if value and string.sub(value, 1, 2) == 'A1' then found[#found + 1] = value end
end
for _, id in ipairs(counted()) do
  local flow = redis.call('HMGET', flow_key(id), 'payload', 'result')
  keep(flow[1])
  keep(flow[2])
  -- A record is a JSON header line, then its result bytes (their length in the header).
  for _, record in ipairs(redis.call('HVALS', p .. ':inv:' .. id)) do
    local newline = string.find(record, '\n', 1, true)
    if newline and string.sub(record, newline + 1, newline + 2) == 'A1' then
      local length = cjson.decode(string.sub(record, 1, newline - 1))['result']
      if type(length) == 'number' then keep(string.sub(record, newline + 1, newline + length)) end
    end
  end
  -- A signal is its time, a newline, its payload.
  for _, signal in ipairs(redis.call('HVALS', p .. ':sig:' .. id)) do
    local newline = string.find(signal, '\n', 1, true)
    if newline then keep(string.sub(signal, newline + 1)) end
  end
end
return found
