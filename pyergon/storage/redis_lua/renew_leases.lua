-- renew_leases: the new expiry, then flow id, lease token, ... Reply: the ids renewed.
-- A renewal is no change of the flow: its version stays.
local expires = arg()
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
