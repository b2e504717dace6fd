-- count_flows: an optional flow type, then statuses. Reply: each status's count.
local suffix = optional()
suffix = suffix and (':' .. suffix) or ''
local counts = {}
for i = cursor, #ARGV do
  counts[#counts + 1] = redis.call('ZCARD', p .. ':status:' .. ARGV[i] .. suffix)
end
return counts
