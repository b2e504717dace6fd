-- create_flow: flow id, '1' to publish a wake-up, then the flow's field/value pairs.
-- Reply: false once created, else the existing flow's fields.
local id, notify = arg(), arg() == '1'
local key = flow_key(id)
if redis.call('EXISTS', key) == 1 then return redis.call('HGETALL', key) end
redis.call('HSET', key, unpack(ARGV, cursor))
redis.call('SADD', p .. ':ids', id)
reindex(id, nil, read_state(id))
if notify then publish_work() end
return false
