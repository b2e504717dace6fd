-- count_flows: an optional flow type, an optional created-at lower bound, flow ids (counted;
-- none: every flow), then statuses. Reply: each status's count. Without ids, from the status
-- indexes (scored by created_at) alone; with ids, from those flows' own fields.
local flow_type = optional()
local suffix = flow_type and (':' .. flow_type) or ''
local since = optional() or '-inf'
local ids = counted()
local counts, position = {}, {}
for i = cursor, #ARGV do
  local key = p .. ':status:' .. ARGV[i] .. suffix
  position[ARGV[i]] = #counts + 1
  if #ids > 0 then
    counts[#counts + 1] = 0
  elseif since == '-inf' then
    counts[#counts + 1] = redis.call('ZCARD', key)
  else
    counts[#counts + 1] = redis.call('ZCOUNT', key, since, '+inf')
  end
end
local bound = since == '-inf' and -math.huge or tonumber(since)  -- Lua 5.1 reads no 'inf'
for _, id in ipairs(ids) do
  local v = redis.call('HMGET', flow_key(id), 'status', 'flow_type', 'created_at')
  local at = v[1] and position[v[1]]
  if at and (not flow_type or v[2] == flow_type) and (tonumber(v[3]) or 0) >= bound then
    counts[at] = counts[at] + 1
  end
end
return counts
