-- beat: a worker's id, incarnation, last beat, flow types (a JSON list) and activity (JSON, or
-- empty while it runs nothing), then what renew_leases takes. Reply: {the ids renewed, 1 if the
-- worker's record is of that incarnation (its last beat, flow types and activity are then
-- stored) else 0}. No record is created.
local key = worker_key(arg())
local incarnation, last_beat, flow_types, activity = arg(), arg(), arg(), arg()
local renewed = renew_held_leases(arg())
local registered = redis.call('TYPE', key).ok == 'hash'
  and redis.call('HGET', key, 'incarnation') == incarnation
if registered then
  if activity == '' then
    redis.call('HSET', key, 'last_beat', last_beat, 'flow_types', flow_types)
    redis.call('HDEL', key, 'activity')
  else
    redis.call('HSET', key, 'last_beat', last_beat, 'flow_types', flow_types, 'activity', activity)
  end
end
return {renewed, registered and 1 or 0}
