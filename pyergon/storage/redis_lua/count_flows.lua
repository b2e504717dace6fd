-- count_flows: an optional flow type, an optional created-at lower bound, then statuses.
-- Reply: each status's count, from the status indexes (scored by created_at) alone.
local suffix = optional()
suffix = suffix and (':' .. suffix) or ''
local since = optional() or '-inf'
local counts = {}
for i = cursor, #ARGV do
  local key = p .. ':status:' .. ARGV[i] .. suffix
  if since == '-inf' then
    counts[#counts + 1] = redis.call('ZCARD', key)
  else
    counts[#counts + 1] = redis.call('ZCOUNT', key, since, '+inf')
  end
end
return counts
