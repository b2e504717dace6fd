-- put_worker: a worker's id, the incarnation its record must have now (optional: none means
-- no record), then the new record's field/value pairs. Reply: 1 if stored, 0 if the record has
-- another incarnation, or what the key holds if it is no hash (nothing is written then).
local id = arg()
local key = worker_key(id)
local replacing = optional()
local found = redis.call('TYPE', key).ok
if found ~= 'none' and found ~= 'hash' then return found end
if redis.call('HGET', key, 'incarnation') ~= (replacing or false) then return 0 end
redis.call('DEL', key)
redis.call('HSET', key, unpack(ARGV, cursor))
redis.call('ZADD', p .. ':workers', 0, id)
return 1
