-- cancel_requests: flow ids. Reply: those RUNNING with cancel_requested set.
local requested = {}
for i = cursor, #ARGV do
  local v = redis.call('HMGET', flow_key(ARGV[i]), 'status', 'cancel_requested')
  if v[1] == 'RUNNING' and v[2] == '1' then requested[#requested + 1] = ARGV[i] end
end
return requested
